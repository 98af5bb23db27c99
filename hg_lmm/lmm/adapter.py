"""The one interface every frozen LMM is driven through: `extract` (teacher-forced) and `answer`.

An adapter wraps an LMM that never trains. Subclasses say how to preprocess an image, how to turn
token ids and an image into input embeddings, and which projected vision features to expose; the
feature gathering (attention rows, hidden states), generation and freezing live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from hg_lmm.lmm.base import LMMDims, LMMFeatures


@dataclass
class EmbeddedInputs:
    """Input embeddings of one sequence and where its tokens and image tokens landed.

    Fields:
      embeds: [1, T', D] the decoder's input embeddings (image tokens spliced in).
      image_positions: [N] positions of the N image tokens in T', row-major over the patch grid.
      token_positions: [T] position in T' of each input token id (-1 for a token that an image
        replaced, e.g. LLaVA's single `<image>`).
    """

    embeds: torch.Tensor
    image_positions: torch.Tensor
    token_positions: torch.Tensor


@dataclass
class Answer:
    """A generated answer plus the features of its tokens (all `mask_ids` are -1 until grounded)."""

    text: str
    token_ids: torch.Tensor
    features: LMMFeatures


class FrozenLMMAdapter(nn.Module, ABC):
    """Base class of the frozen-LMM adapters.

    Arguments:
      lmm: the multimodal model; it is put in eval mode and frozen here, and stays so.
      tokenizer: its tokenizer.
      dims: the dims record of `lmm` (what the heads are sized by).
    """

    def __init__(self, *, lmm: nn.Module, tokenizer: Any, dims: LMMDims) -> None:
        super().__init__()
        self.lmm = lmm
        self.tokenizer = tokenizer
        self.dims = dims
        self.lmm.requires_grad_(False)
        self.lmm.eval()

    # --- what a subclass provides -------------------------------------------------------------

    @property
    @abstractmethod
    def language_model(self) -> nn.Module:
        """The decoder (a `PreTrainedModel` that takes `inputs_embeds`)."""

    @property
    @abstractmethod
    def train_prompt(self) -> str:
        """The prompt that precedes the caption during training and `extract`."""

    @abstractmethod
    def chat_prompt(self, question: str) -> str:
        """The full generation prompt for a question about the image."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, dict]:
        """Image -> (pixel_values [3, S, S], meta record)."""

    @abstractmethod
    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, 3, S, S] -> (decoder image embeddings [N, D], vision features [V, N, C])."""

    @abstractmethod
    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> EmbeddedInputs:
        """Token ids [T] (with the LMM's image token(s)) + image embeddings -> decoder inputs."""

    # --- frozen by construction ---------------------------------------------------------------

    def train(self, mode: bool = True) -> FrozenLMMAdapter:
        # The LMM never leaves eval mode (dropout off), whatever the runner asks of its parents.
        super().train(mode)
        self.lmm.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.lmm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lmm.parameters()).dtype

    # --- features ---------------------------------------------------------------------------

    @torch.no_grad()
    def features(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        query: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced features of the tokens `query` (indices into `input_ids`).

        Shapes: input_ids [T_all], pixel_values [3, S, S], query [T] ->
        (attn [L, H, T, g, g] float32, hidden [L, T, D] float32, vision [V, N, C] float32).
        """
        g = self.dims.grid
        pixel_values = pixel_values.to(self.device, self.dtype)[None]
        image_embeds, vision = self.encode_image(pixel_values)
        inputs = self.embed_inputs(input_ids.to(self.device), image_embeds)
        positions = inputs.token_positions[query.to(inputs.token_positions.device)]
        if (positions < 0).any():
            raise ValueError("query tokens must be text tokens, not image placeholders")
        out = self.language_model(
            inputs_embeds=inputs.embeds,
            output_attentions=True,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
        if out.attentions is None or out.attentions[0] is None:
            raise RuntimeError(
                "the decoder returned no attention probabilities; load it with "
                "attn_implementation='eager'"
            )
        img = inputs.image_positions
        attn = torch.stack([a[0][:, positions][:, :, img] for a in out.attentions])
        attn = attn.unflatten(-1, (g, g))
        hidden = torch.stack(out.hidden_states[1:])[:, 0, positions]
        return attn.float(), hidden.float(), vision.float()

    def _caption_query(self, mask_ids: torch.Tensor, caption_start: int | None) -> torch.Tensor:
        if caption_start is None:
            tagged = (mask_ids >= 0).nonzero()
            if len(tagged) == 0:
                raise ValueError("no token carries a phrase (all mask_ids are -1)")
            caption_start = int(tagged[0])
        return torch.arange(caption_start, len(mask_ids))

    def extract(self, sample: dict[str, Any]) -> LMMFeatures:
        """Teacher-force a sample's caption and return the features of its caption tokens.

        `sample` holds `input_ids` [T_all] and `mask_ids` [T_all] (the prompt, then the caption),
        and either `image` (PIL) or `pixel_values` [3, S, S] with `meta`. The caption starts at
        `caption_start` when given, else at the first token with a phrase.
        """
        input_ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
        mask_ids = torch.as_tensor(sample["mask_ids"], dtype=torch.long)
        if input_ids.shape != mask_ids.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and mask_ids {tuple(mask_ids.shape)} differ"
            )
        if "pixel_values" in sample:
            pixel_values, meta = sample["pixel_values"], sample["meta"]
        else:
            pixel_values, meta = self.preprocess(sample["image"])
        query = self._caption_query(mask_ids, sample.get("caption_start"))
        attn, hidden, vision = self.features(input_ids, pixel_values, query)
        return LMMFeatures(
            attn=attn,
            hidden=hidden,
            vision=vision,
            pixel_values=pixel_values.float(),
            mask_ids=mask_ids[query],
            meta=meta,
            token_ids=input_ids[query],
        )

    @torch.no_grad()
    def generate_ids(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int
    ) -> torch.Tensor:
        """Greedy decoding from the prompt; the new token ids [T_new] (stop token dropped)."""
        image_embeds, _ = self.encode_image(pixel_values.to(self.device, self.dtype)[None])
        inputs = self.embed_inputs(input_ids.to(self.device), image_embeds)
        out = self.language_model.generate(
            inputs_embeds=inputs.embeds,
            attention_mask=torch.ones(
                inputs.embeds.shape[:2], dtype=torch.long, device=self.device
            ),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        new = out[0]  # with inputs_embeds only, generate returns just the new tokens
        if len(new) and new[-1] == self.tokenizer.eos_token_id:
            new = new[:-1]
        return new.cpu()

    def answer(self, image: Image.Image, question: str, max_new_tokens: int = 64) -> Answer:
        """Answer a question greedily, then return the features of the generated tokens.

        The features come from one teacher-forced pass over prompt + answer, so they are exactly
        those `extract` gives for the same text (what `ground` later consumes).
        """
        pixel_values, meta = self.preprocess(image)
        prompt_ids = torch.tensor(self.tokenizer(self.chat_prompt(question)).input_ids)
        new_ids = self.generate_ids(prompt_ids, pixel_values, max_new_tokens)
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        if len(new_ids) == 0:
            raise ValueError(f"the LMM generated an empty answer to {question!r}")
        all_ids = torch.cat([prompt_ids, new_ids])
        query = torch.arange(len(prompt_ids), len(all_ids))
        attn, hidden, vision = self.features(all_ids, pixel_values, query)
        feats = LMMFeatures(
            attn=attn,
            hidden=hidden,
            vision=vision,
            pixel_values=pixel_values.float(),
            mask_ids=torch.full((len(new_ids),), -1, dtype=torch.long),
            meta=meta,
            token_ids=new_ids,
        )
        return Answer(text=text, token_ids=new_ids, features=feats)
