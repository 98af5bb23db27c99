"""LLaVA-1.5 as a frozen LMM, on the stock `transformers.LlavaForConditionalGeneration`.

No patched source: the vision tower runs once with `output_hidden_states=True`; its penultimate
layer feeds the decoder exactly as LLaVA does, and the selected layers (CLS dropped) go through the
same `multi_modal_projector` to give the multi-layer vision features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hg_lmm.lmm.adapter import EmbeddedInputs, FrozenLMMAdapter
from hg_lmm.lmm.base import LMMDims
from hg_lmm.lmm.llava.processing import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    TRAIN_PROMPT,
    LlavaImageProcessor,
)
from hg_lmm.lmm.processors import CLIP_MEAN, CLIP_STD

DEFAULT_VISION_LAYERS = (3, 6, 9, 12, 15, 18, 20, 23)


class LlavaAdapter(FrozenLMMAdapter):
    """Frozen LLaVA-1.5.

    Arguments:
      lmm: a `LlavaForConditionalGeneration` (load it with `attn_implementation="sdpa"`; the
        attention rows are recorded alongside, see hg_lmm.lmm.capture).
      tokenizer: its tokenizer (must know `<image>`).
      processor: image -> (pixel_values [3, S, S], meta): long side to S, centred pad, CLIP norm.
      vision_layers: CLIP blocks (0-based) whose outputs form the vision features.
      eager_features: use the reference feature path (see `FrozenLMMAdapter`).
    """

    def __init__(
        self,
        *,
        lmm: torch.nn.Module,
        tokenizer: Any,
        processor: Callable[[Image.Image], tuple[torch.Tensor, dict]],
        vision_layers: Sequence[int] = DEFAULT_VISION_LAYERS,
        eager_features: bool = False,
    ) -> None:
        cfg = lmm.config
        vcfg, tcfg = cfg.vision_config, cfg.text_config
        depth = vcfg.num_hidden_layers
        if any(not 0 <= i < depth for i in vision_layers):
            raise ValueError(
                f"vision_layers {tuple(vision_layers)} do not fit the {depth}-block CLIP tower; "
                "pass vision_layers= with indices below the tower depth"
            )
        if cfg.vision_feature_select_strategy != "default":
            raise ValueError(
                "only vision_feature_select_strategy='default' (CLS dropped) is supported"
            )
        dims = LMMDims(
            num_layers=tcfg.num_hidden_layers,
            num_heads=tcfg.num_attention_heads,
            hidden_size=tcfg.hidden_size,
            grid=vcfg.image_size // vcfg.patch_size,
            vision_channels=tcfg.hidden_size,
            vision_layers=tuple(vision_layers),
            image_size=vcfg.image_size,
        )
        super().__init__(lmm=lmm, tokenizer=tokenizer, dims=dims, eager_features=eager_features)
        self.processor = processor
        self.image_token_id = cfg.image_token_index
        if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != self.image_token_id:
            raise ValueError(
                f"the tokenizer's {IMAGE_TOKEN} id differs from config.image_token_index"
            )

    @property
    def language_model(self) -> torch.nn.Module:
        return self.lmm.language_model

    @property
    def train_prompt(self) -> str:
        return TRAIN_PROMPT

    def chat_prompt(self, question: str) -> str:
        return CHAT_TEMPLATE.format(question=question)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, dict]:
        return self.processor(image)

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> (decoder image embeddings [B, N, D], vision features [B, V, N, C])."""
        out = self.lmm.vision_tower(pixel_values, output_hidden_states=True)
        states = out.hidden_states  # [0] = embeddings, [i + 1] = output of block i
        project = self.lmm.multi_modal_projector
        image_embeds = project(states[self.lmm.config.vision_feature_layer][:, 1:])
        picked = torch.stack([states[i + 1][:, 1:] for i in self.dims.vision_layers], dim=1)
        return image_embeds, project(picked)

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> EmbeddedInputs:
        """The one `<image>` token is replaced by the N image embeddings, as LLaVA merges them.
        Its own embedding is never looked up (MGM's `<image>` id lies past the vocabulary)."""
        is_image = input_ids == self.image_token_id
        where = is_image.nonzero().flatten()
        if len(where) != 1:
            raise ValueError(f"expected exactly one {IMAGE_TOKEN} token, found {len(where)}")
        i, n = int(where[0]), image_embeds.shape[0]
        text = self.lmm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        embeds = torch.cat([text[:i], image_embeds.to(text.dtype), text[i + 1 :]])[None]
        positions = torch.arange(len(input_ids), device=input_ids.device)
        positions = torch.where(positions > i, positions + n - 1, positions)
        positions[i] = -1
        image_positions = torch.arange(i, i + n, device=input_ids.device)
        return EmbeddedInputs(embeds, image_positions, positions)


def build_llava_adapter(
    *,
    model_path: str | Path,
    vision_layers: Sequence[int] = DEFAULT_VISION_LAYERS,
    torch_dtype: str | torch.dtype = "bfloat16",
    eager_features: bool = False,
) -> LlavaAdapter:
    """Load a LLaVA-1.5 repo (hub id or local folder) with SDPA attention, its tokenizer and
    our letterbox processor (mean/std from the repo's `preprocessor_config.json` when present).

    eager_features: the reference feature path (see `FrozenLMMAdapter`)."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    lmm = LlavaForConditionalGeneration.from_pretrained(
        model_path, torch_dtype=dtype, attn_implementation="sdpa", low_cpu_mem_usage=True
    )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    mean, std = CLIP_MEAN, CLIP_STD
    pre = Path(model_path) / "preprocessor_config.json"
    if pre.is_file():
        import json

        cfg = json.loads(pre.read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    processor = LlavaImageProcessor(
        image_size=lmm.config.vision_config.image_size, image_mean=mean, image_std=std
    )
    return LlavaAdapter(
        lmm=lmm,
        tokenizer=tokenizer,
        processor=processor,
        vision_layers=vision_layers,
        eager_features=eager_features,
    )
