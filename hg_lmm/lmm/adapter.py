"""The one interface every frozen LMM is driven through: `extract` (teacher-forced) and `answer`.

An adapter wraps an LMM that never trains. Subclasses say how to preprocess an image, how to turn
token ids and an image into input embeddings, and which projected vision features to expose; the
feature gathering (attention rows, hidden states), generation and freezing live here once.

How features are gathered (see hg_lmm.lmm.capture):
- default: the decoder runs with its own fast attention (load it with
  `attn_implementation="sdpa"`) and without the LM head, while `RowCapture` computes the
  attention probabilities of only the query rows the heads read, over the image columns, and
  keeps only those rows' hidden states. Samples of a batch share one vision pass and one
  decoder pass (right padding + attention mask).
- `eager_features=True`: the reference path, one sample at a time: the full decoder with
  `output_attentions=True, output_hidden_states=True` (eager attention), rows picked afterwards.
  Both give the same features (tests/lmm check it to 1e-5 in float32).
- `answer` records the answer tokens' rows during KV-cache generation (one vision pass, no
  second forward); the reference path generates, then teacher-forces prompt + answer.
- `extract_group` (evaluation): several captions of one image. The vision tower and the prompt
  (the token prefix every caption shares, image included) run once; the prompt's keys and values
  are kept as a KV cache, and the captions run over it in batches, right-padded, with their rows
  captured against the cached keys. Under causal attention the prefix never sees a caption, so
  the features equal `extract_batch`'s (tests/lmm check it to 1e-5 in float32).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from hg_lmm.lmm.base import LMMDims, LMMFeatures
from hg_lmm.lmm.capture import RowCapture

logger = logging.getLogger(__name__)

# (attn [L, H, T, g, g], hidden [L, T, D], vision [V, N, C]) of one sample, float32.
FeatureTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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
      eager_features: gather features the reference way (full eager forward with every attention
        map, one sample at a time; `answer` then teacher-forces a second pass). Slower and
        O(L*H*T^2) in memory; for checks and benchmarks.
    """

    # Whether `extract_group` may run the shared prompt once as a KV cache (an adapter whose
    # prompt layout depends on the image, or whose decoder the capture cannot continue from a
    # cache, sets False; `extract_group` then says so and runs every caption in full).
    shares_prefix: ClassVar[bool] = True

    def __init__(
        self, *, lmm: nn.Module, tokenizer: Any, dims: LMMDims, eager_features: bool = False
    ) -> None:
        super().__init__()
        self.lmm = lmm
        self.tokenizer = tokenizer
        self.dims = dims
        self.eager_features = eager_features
        self.lmm.requires_grad_(False)
        self.lmm.eval()
        impl = getattr(self.language_model.config, "_attn_implementation", None)
        if impl == "eager" and not eager_features:
            logger.warning(
                "the decoder was loaded with attn_implementation='eager': features are exact but "
                "slower than with 'sdpa' (pass attn_implementation='sdpa' when loading it)"
            )

    # --- what a subclass provides -------------------------------------------------------------

    @property
    @abstractmethod
    def language_model(self) -> nn.Module:
        """The decoder with its LM head (a LLaMA-family `PreTrainedModel` taking `inputs_embeds`;
        `get_decoder()` gives it without the head)."""

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
    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> (decoder image embeddings [B, N, D], vision features [B, V, N, C])."""

    @abstractmethod
    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> EmbeddedInputs:
        """Token ids [T] (with the LMM's image token(s)) + image embeddings [N, D] -> decoder
        inputs."""

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

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, 3, S, S] -> (decoder image embeddings [N, D], vision features [V, N, C])."""
        image_embeds, vision = self.encode_images(pixel_values)
        return image_embeds[0], vision[0]

    def collate_pixels(self, pixels: Sequence[torch.Tensor], metas: Sequence[dict]) -> Any:
        """The `pixel_values` argument of `features_batch` for B samples: [B, 3, S, S]. An LMM
        whose images differ in size per sample overrides it (LLaVA-NeXT keeps a list)."""
        return torch.stack(list(pixels))

    def _pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.to(self.device, self.dtype)

    def grid_attention(self, attn: torch.Tensor) -> torch.Tensor:
        """Attention rows over the N image tokens -> the maps the heads read:
        [L, H, T, N] -> [L, H, T, g, g] (row-major patch grid). An LMM whose image tokens form
        several grids overrides it (MGM-HD: [2L, H, T, h, w])."""
        return attn.unflatten(-1, (self.dims.grid, self.dims.grid))

    # --- features ---------------------------------------------------------------------------

    def features(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        query: torch.Tensor,
    ) -> FeatureTensors:
        """Teacher-forced features of the tokens `query` (indices into `input_ids`).

        Shapes: input_ids [T_all], pixel_values [3, S, S], query [T] ->
        (attn [L, H, T, g, g] float32, hidden [L, T, D] float32, vision [V, N, C] float32).
        """
        return self.features_batch([input_ids], pixel_values[None], [query])[0]

    @torch.no_grad()
    def features_batch(
        self,
        input_ids: Sequence[torch.Tensor],
        pixel_values: torch.Tensor,
        queries: Sequence[torch.Tensor],
        dtype: torch.dtype | None = torch.float32,
    ) -> list[FeatureTensors]:
        """`features` of B samples, with one vision pass and one decoder pass for all of them.

        Shapes: input_ids B x [T_b], pixel_values [B, 3, S, S], queries B x [R_b] -> per sample
        (attn [L, H, R_b, g, g], hidden [L, R_b, D], vision [V, N, C]) in `dtype` (None: the
        LMM's own, half the size for a bf16 LMM and no less precise than its outputs).
        Sequences are right-padded and masked, which leaves every real token's features as
        alone (causal attention never looks right).
        """
        if not (len(input_ids) == len(queries) == len(pixel_values)):
            raise ValueError(
                f"got {len(input_ids)} token sequences, {len(pixel_values)} images and "
                f"{len(queries)} queries; pass one of each per sample"
            )
        dtype = dtype or self.dtype
        if self.eager_features:
            return [
                tuple(t.to(dtype) for t in self._eager_features(ids, px, q))
                for ids, px, q in zip(input_ids, pixel_values, queries)
            ]
        image_embeds, vision = self.encode_images(self._pixels(pixel_values))
        inputs = [
            self.embed_inputs(ids.to(self.device), emb) for ids, emb in zip(input_ids, image_embeds)
        ]
        rows = [self._query_positions(x, q) for x, q in zip(inputs, queries)]
        embeds, key_mask = _pad_right([x.embeds[0] for x in inputs])
        padded = not bool(key_mask.all())
        decoder = self.language_model.get_decoder()
        with RowCapture(
            decoder,
            rows=_pad_right(rows)[0],  # shorter samples' padding rows read position 0
            columns=torch.stack([x.image_positions for x in inputs]),
            key_mask=key_mask if padded else None,
            release_cache=True,
        ) as capture:
            # The cache only hands the post-RoPE keys to the capture, layer by layer.
            decoder(
                inputs_embeds=embeds,
                attention_mask=key_mask.long() if padded else None,
                use_cache=True,
                return_dict=True,
            )
        attn, hidden = capture.attn, capture.hidden
        del capture  # its per-layer records, now stacked into attn and hidden
        # With several samples, each gets its own storage rather than a view of the batch's, so
        # that a training step frees a sample's features as soon as its backward is done.
        copy = len(rows) > 1
        return [
            (
                self.grid_attention(attn[:, b, :, : len(r)]).to(dtype, copy=copy),
                hidden[:, b, : len(r)].to(dtype, copy=copy),
                vision[b].to(dtype, copy=copy),
            )
            for b, r in enumerate(rows)
        ]

    @torch.no_grad()
    def _eager_features(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, query: torch.Tensor
    ) -> FeatureTensors:
        """The reference path for one sample: every attention map and hidden state, then rows."""
        image_embeds, vision = self.encode_image(self._pixels(pixel_values)[None])
        inputs = self.embed_inputs(input_ids.to(self.device), image_embeds)
        positions = self._query_positions(inputs, query)
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
                "attn_implementation='eager' or 'sdpa' for eager_features=True"
            )
        img = inputs.image_positions
        attn = self.grid_attention(
            torch.stack([a[0][:, positions][:, :, img] for a in out.attentions])
        )
        hidden = torch.stack(out.hidden_states[1:])[:, 0, positions]
        return attn.float(), hidden.float(), vision.float()

    def features_shared(
        self,
        input_ids: Sequence[torch.Tensor],
        pixel_values: torch.Tensor,
        queries: Sequence[torch.Tensor],
        dtype: torch.dtype | None = torch.float32,
        batch_size: int | None = None,
    ) -> list[FeatureTensors]:
        """`features_batch` of B token sequences on one image, sharing its frozen work.

        Shapes: input_ids B x [T_b], pixel_values [3, S, S] (the one image), queries B x [R_b]
        -> per sample (attn [L, H, R_b, g, g], hidden [L, R_b, D], vision [V, N, C]) in `dtype`.
        One vision pass; the prefix every sequence shares (up to the first query token; it must
        hold the image) runs once into a KV cache; the rest of the sequences (the captions) run
        over it, `batch_size` at a time (None: all at once), right-padded. The prefix's keys and
        values do not depend on what follows it (causal attention), so the features are those of
        `features_batch`. Falls back to it, with a log line, where sharing does not apply.
        """
        chunks = self._shared_chunks(input_ids, pixel_values, queries, dtype, batch_size)
        return [f for chunk in chunks for f in chunk]

    @torch.no_grad()
    def _shared_chunks(
        self,
        input_ids: Sequence[torch.Tensor],
        pixel_values: torch.Tensor,
        queries: Sequence[torch.Tensor],
        dtype: torch.dtype | None,
        batch_size: int | None,
    ) -> Iterator[list[FeatureTensors]]:
        """`features_shared`, one caption pass (`batch_size` sequences) at a time, so that a
        caller can use and drop each pass's features before the next is computed."""
        if not (len(input_ids) == len(queries)):
            raise ValueError(f"got {len(input_ids)} token sequences and {len(queries)} queries")
        if not input_ids:
            return
        dtype = dtype or self.dtype
        step = batch_size or len(input_ids)
        prefix, why_not = self._shared_prefix(input_ids, queries)
        if why_not:
            _log_unshared(self, why_not)
            pixels = pixel_values[None]
            for i in range(0, len(input_ids), step):
                ids = input_ids[i : i + step]
                yield self.features_batch(
                    ids, pixels.expand(len(ids), *pixels.shape[1:]), queries[i : i + step], dtype
                )
            return
        image_embeds, vision = self.encode_image(self._pixels(pixel_values)[None])
        vision = vision.to(dtype)
        head = self.embed_inputs(input_ids[0][:prefix].to(self.device), image_embeds)
        decoder = self.language_model.get_decoder()
        past = decoder(inputs_embeds=head.embeds, use_cache=True, return_dict=True).past_key_values
        cache = [(k, v) for k, v in past]  # per layer (keys, values) [1, H_kv, P', d]
        del past
        for i in range(0, len(input_ids), step):
            rows = self._caption_pass(
                decoder, cache, head, input_ids[i : i + step], queries[i : i + step], prefix
            )
            yield [(attn.to(dtype), hidden.to(dtype), vision) for attn, hidden in rows]

    def _shared_prefix(
        self, input_ids: Sequence[torch.Tensor], queries: Sequence[torch.Tensor]
    ) -> tuple[int, str | None]:
        """(P, None): the first P tokens are the same in every sequence, hold the whole image and
        no query token; or (0, why sharing does not apply)."""
        if self.eager_features:
            return 0, "eager_features=True, the reference path"
        image_id = getattr(self, "image_token_id", None)
        if image_id is None:
            return 0, "the adapter names no image token"
        first = input_ids[0]
        length = min(int(q.min()) if len(q) else len(ids) for ids, q in zip(input_ids, queries))
        for ids in input_ids[1:]:
            n = min(length, len(ids))
            differ = (ids[:n] != first[:n]).nonzero()
            length = int(differ[0]) if len(differ) else n
        images = [(ids == image_id).nonzero() for ids in input_ids]
        if any(len(w) == 0 or int(w.max()) >= length for w in images):
            return 0, "the shared prompt does not hold the whole image"
        return length, None

    def _caption_pass(
        self,
        decoder: nn.Module,
        prefix_cache: Sequence[tuple[torch.Tensor, torch.Tensor]],
        head: EmbeddedInputs,
        input_ids: Sequence[torch.Tensor],
        queries: Sequence[torch.Tensor],
        prefix: int,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One decoder pass of the captions (the tokens after `prefix`) over the prefix's KV
        cache (shared, never modified): per sample (attn as `grid_attention` gives it, e.g.
        [L, H, R_b, g, g]; hidden [L, R_b, D])."""
        embed = self.language_model.get_input_embeddings()
        start = head.embeds.shape[1]  # where the captions start in the embedded sequence
        tails = [ids[prefix:].to(self.device) for ids in input_ids]
        embeds, mask = _pad_right([embed(t) for t in tails])
        # Query token i of a sequence is caption token i - prefix, at position start + i - prefix.
        rows = [q.to(self.device) - prefix + start for q in queries]
        batch = len(tails)
        # The prefix's entries seen by every caption without a copy; the decoder wraps them in a
        # fresh cache, whose entries grow by concatenation: `prefix_cache` is left as it was.
        cache = tuple((k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                      for k, v in prefix_cache)  # fmt: skip
        padded = not bool(mask.all())
        key_mask = torch.cat([mask.new_ones(batch, start), mask], dim=1)
        with RowCapture(
            decoder,
            rows=_pad_right(rows, fill=start)[0],  # padding rows read the first caption token
            columns=head.image_positions[None].expand(batch, -1),
            key_mask=key_mask if padded else None,
            release_cache=True,
        ) as capture:
            decoder(
                inputs_embeds=embeds,
                attention_mask=key_mask.long() if padded else None,
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
        attn, hidden = capture.attn, capture.hidden
        del capture, cache
        return [
            (self.grid_attention(attn[:, b, :, : len(r)]), hidden[:, b, : len(r)])
            for b, r in enumerate(rows)
        ]

    @staticmethod
    def _query_positions(inputs: EmbeddedInputs, query: torch.Tensor) -> torch.Tensor:
        positions = inputs.token_positions[query.to(inputs.token_positions.device)]
        if (positions < 0).any():
            raise ValueError("query tokens must be text tokens, not image placeholders")
        return positions

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
        return self.extract_batch([sample])[0]

    def extract_batch(
        self, samples: Sequence[dict[str, Any]], dtype: torch.dtype | None = torch.float32
    ) -> list[LMMFeatures]:
        """`extract` of several samples through one batched frozen forward (`features_batch`);
        attn, hidden and vision in `dtype` (None: the LMM's own)."""
        prepared = [self._prepare(sample) for sample in samples]
        if not prepared:
            return []
        ids, mids, pixels, metas, queries = zip(*prepared)
        tensors = self.features_batch(ids, self.collate_pixels(pixels, metas), queries, dtype)
        return self._records(tensors, prepared)

    def extract_group(
        self,
        samples: Sequence[dict[str, Any]],
        dtype: torch.dtype | None = torch.float32,
        batch_size: int | None = None,
    ) -> list[LMMFeatures]:
        """`extract_batch` of samples that share one image (e.g. the referring expressions of a
        RefCOCO image), with the image's frozen work done once (`features_shared`): the first
        sample's `image` (or `pixel_values` + `meta`) stands for all. `batch_size` captions run
        per decoder pass (None: all)."""
        return [f for chunk in self.iter_group(samples, dtype, batch_size) for f in chunk]

    def iter_group(
        self,
        samples: Sequence[dict[str, Any]],
        dtype: torch.dtype | None = torch.float32,
        batch_size: int | None = None,
    ) -> Iterator[list[LMMFeatures]]:
        """`extract_group`, one caption pass (`batch_size` samples, in order) at a time: a
        caller that uses and drops each pass's features keeps at most one pass alive."""
        if not samples:
            return
        step = batch_size or len(samples)
        if not self.shares_prefix:
            _log_unshared(self, "its prompt layout follows each image")
            for i in range(0, len(samples), step):
                yield self.extract_batch(samples[i : i + step], dtype)
            return
        image = self._prepare(samples[0])[2:4]
        prepared = [self._prepare(sample, image) for sample in samples]
        ids, _, _, _, queries = zip(*prepared)
        chunks = self._shared_chunks(ids, image[0], queries, dtype, batch_size)
        for i, tensors in zip(range(0, len(samples), step), chunks):
            yield self._records(tensors, prepared[i : i + step])

    def _prepare(
        self, sample: dict[str, Any], image: tuple[torch.Tensor, dict] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict, torch.Tensor]:
        """(input_ids, mask_ids, pixel_values, meta, query) of a sample; `image` (pixel_values,
        meta), when given, instead of the sample's own."""
        input_ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
        mask_ids = torch.as_tensor(sample["mask_ids"], dtype=torch.long)
        if input_ids.shape != mask_ids.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and mask_ids {tuple(mask_ids.shape)} differ"
            )
        if image is not None:
            pixel_values, meta = image
        elif "pixel_values" in sample:
            pixel_values, meta = sample["pixel_values"], sample["meta"]
        else:
            pixel_values, meta = self.preprocess(sample["image"])
        query = self._caption_query(mask_ids, sample.get("caption_start"))
        return input_ids, mask_ids, torch.as_tensor(pixel_values), meta, query

    @staticmethod
    def _records(tensors: Sequence[FeatureTensors], prepared: Sequence[tuple]) -> list[LMMFeatures]:
        return [
            LMMFeatures(
                attn=attn,
                hidden=hidden,
                vision=vision,
                pixel_values=px.float(),
                mask_ids=m[q],
                meta=meta,
                token_ids=i[q],
            )
            for (attn, hidden, vision), (i, m, px, meta, q) in zip(tensors, prepared)
        ]

    # --- generation -------------------------------------------------------------------------

    @property
    def stop_token_id(self) -> int:
        """The token that ends an answer (the tokenizer's eos unless the chat template ends its
        turns with another one)."""
        return self.tokenizer.eos_token_id

    def _generate(self, inputs: EmbeddedInputs, max_new_tokens: int) -> Any:
        """Greedy `generate` from the prompt embeddings (HF's output with its KV cache)."""
        return self.language_model.generate(
            inputs_embeds=inputs.embeds,
            attention_mask=torch.ones(
                inputs.embeds.shape[:2], dtype=torch.long, device=self.device
            ),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.stop_token_id,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            return_dict_in_generate=True,
        )

    def _new_tokens(self, out: Any) -> torch.Tensor:
        new = out.sequences[0]  # with inputs_embeds only, generate returns just the new tokens
        if len(new) and new[-1] == self.stop_token_id:
            new = new[:-1]
        return new

    @torch.no_grad()
    def generate_ids(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int
    ) -> torch.Tensor:
        """Greedy decoding from the prompt; the new token ids [T_new] (stop token dropped)."""
        image_embeds, _ = self.encode_image(self._pixels(pixel_values)[None])
        inputs = self.embed_inputs(input_ids.to(self.device), image_embeds)
        return self._new_tokens(self._generate(inputs, max_new_tokens)).cpu()

    @torch.no_grad()
    def generate_with_features(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int
    ) -> tuple[torch.Tensor, FeatureTensors | None]:
        """Greedy decoding that records the new tokens' features while it generates.

        Shapes: input_ids [T_prompt], pixel_values [3, S, S] -> (new ids [T] (stop token
        dropped), (attn [L, H, T, g, g], hidden [L, T, D], vision [V, N, C]) float32, or None
        when T = 0). The features equal `features` of prompt + new ids at the new tokens. One
        vision pass; each generated token's rows are recorded when it is fed back, and the last
        one, which `generate` never feeds, gets one more cached decoder step.
        """
        image_embeds, vision = self.encode_image(self._pixels(pixel_values)[None])
        inputs = self.embed_inputs(input_ids.to(self.device), image_embeds)
        decoder = self.language_model.get_decoder()
        with RowCapture(
            decoder, columns=inputs.image_positions[None], from_position=inputs.embeds.shape[1]
        ) as capture:
            out = self._generate(inputs, max_new_tokens)
            new = self._new_tokens(out)
            if len(new) and capture.num_rows == len(new) - 1:
                last = self.language_model.get_input_embeddings()(new[-1:])[None]
                decoder(inputs_embeds=last, past_key_values=out.past_key_values, use_cache=True)
        t = len(new)
        if t == 0:
            return new.cpu(), None
        if capture.num_rows < t:
            raise RuntimeError(f"recorded {capture.num_rows} rows for {t} generated tokens")
        attn = self.grid_attention(capture.attn[:, 0, :, :t])
        return new.cpu(), (attn.float(), capture.hidden[:, 0, :t].float(), vision.float())

    def answer(self, image: Image.Image, question: str, max_new_tokens: int = 64) -> Answer:
        """Answer a question greedily and return the features of the generated tokens.

        The features are recorded during generation; they equal what `extract` gives for
        prompt + answer (the reference path, `eager_features=True`, computes them that way).
        """
        pixel_values, meta = self.preprocess(image)
        prompt_ids = torch.tensor(self.tokenizer(self.chat_prompt(question)).input_ids)
        if self.eager_features:
            new_ids, tensors = self.generate_ids(prompt_ids, pixel_values, max_new_tokens), None
            if len(new_ids):
                query = torch.arange(len(prompt_ids), len(prompt_ids) + len(new_ids))
                tensors = self.features(torch.cat([prompt_ids, new_ids]), pixel_values, query)
        else:
            new_ids, tensors = self.generate_with_features(prompt_ids, pixel_values, max_new_tokens)
        if tensors is None:
            raise ValueError(f"the LMM generated an empty answer to {question!r}")
        attn, hidden, vision = tensors
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
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


def _log_unshared(adapter: FrozenLMMAdapter, why: str) -> None:
    """Say (once per adapter and reason) that `extract_group` runs every caption in full."""
    said = adapter.__dict__.setdefault("_unshared_said", set())
    if why not in said:
        said.add(why)
        logger.warning(
            "%s: the image's frozen work is not shared between its captions (%s); every caption "
            "runs the whole prompt, with the same features",
            type(adapter).__name__,
            why,
        )


def _pad_right(seqs: Sequence[torch.Tensor], fill: Any = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """B tensors [T_b, ...] -> (`fill`-padded [B, T_max, ...], valid mask [B, T_max] bool)."""
    longest = max(len(s) for s in seqs)
    out = seqs[0].new_full((len(seqs), longest, *seqs[0].shape[1:]), fill)
    mask = torch.zeros((len(seqs), longest), dtype=torch.bool, device=seqs[0].device)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = s
        mask[b, : len(s)] = True
    return out, mask
