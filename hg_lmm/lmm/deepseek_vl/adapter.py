"""DeepSeek-VL (1.3B single tower, 7B hybrid) as a frozen LMM, on our `MultiModalityCausalLM`.

The prompts carry the image as `num_image_tokens` `<image_placeholder>` tokens already expanded in
the text (as the official processor does after tokenising), so image embeddings replace those
token embeddings one for one and every token keeps its position. One vision pass gives both the
decoder's image embeddings and the multi-layer vision features
(`MultiModalityCausalLM.encode_images_with_features`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hg_lmm.lmm.adapter import EmbeddedInputs, FrozenLMMAdapter
from hg_lmm.lmm.base import LMMDims
from hg_lmm.lmm.deepseek_vl.processing import (
    DEEPSEEK_VL_IMAGE_TAG,
    DEEPSEEK_VL_STOP,
    DeepseekVLImageProcessor,
    deepseek_vl_chat_prompt,
    deepseek_vl_train_prompt,
)

logger = logging.getLogger(__name__)

# What the released 1.3B processor normalises with (SigLIP's 0.5); used only when a model folder
# has no preprocessor_config.json and its tower does not normalise by itself.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class DeepseekVLAdapter(FrozenLMMAdapter):
    """Frozen DeepSeek-VL.

    Arguments:
      lmm: a `MultiModalityCausalLM` (load it with `attn_implementation="sdpa"`; the attention
        rows are recorded alongside, see hg_lmm.lmm.capture); its config sets the selected
        vision layers (`vision_feature_layers`, and `high_res_feature_layers` for the hybrid
        tower).
      tokenizer: its tokenizer (must know `<image_placeholder>`; its eos token ends generation).
      processor: image -> (pixel_values [3, S, S], meta), S = the vision input size (1024 for 7B).
      eager_features: use the reference feature path (see `FrozenLMMAdapter`).

    dims: L, H, D from `language_config`; g = the SigLIP grid; C = the aligner output width;
    vision_layers = the selected SigLIP blocks (each paired with a SAM block in the 7B tower);
    image_size = S.
    """

    def __init__(
        self,
        *,
        lmm: torch.nn.Module,
        tokenizer: Any,
        processor: Callable[[Image.Image], tuple[torch.Tensor, dict]],
        eager_features: bool = False,
    ) -> None:
        cfg = lmm.config
        lcfg = cfg.language_config
        low_layers, _ = cfg.feature_layers()  # validates both towers' selections
        dims = LMMDims(
            num_layers=lcfg.num_hidden_layers,
            num_heads=lcfg.num_attention_heads,
            hidden_size=lcfg.hidden_size,
            grid=cfg.vision_grid,
            vision_channels=cfg.vision_channels,
            vision_layers=tuple(low_layers),
            image_size=cfg.vision_input_size,
        )
        super().__init__(lmm=lmm, tokenizer=tokenizer, dims=dims, eager_features=eager_features)
        self.processor = processor
        image_id = tokenizer.convert_tokens_to_ids(DEEPSEEK_VL_IMAGE_TAG)
        if image_id is None or image_id == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(
                f"the tokenizer has no {DEEPSEEK_VL_IMAGE_TAG!r} token; load the model's own "
                "tokenizer (it adds the tag as a special token)"
            )
        self.image_token_id = int(image_id)
        if tokenizer.eos_token != DEEPSEEK_VL_STOP:
            raise ValueError(
                f"the tokenizer's eos token is {tokenizer.eos_token!r}, but DeepSeek-VL stops at "
                f"{DEEPSEEK_VL_STOP!r}; load the model's own tokenizer"
            )

    @property
    def language_model(self) -> torch.nn.Module:
        return self.lmm.language_model

    @property
    def image_tokens(self) -> str:
        """The N expanded `<image_placeholder>` tags one image takes in a prompt."""
        return DEEPSEEK_VL_IMAGE_TAG * self.dims.num_image_tokens

    @property
    def train_prompt(self) -> str:
        return deepseek_vl_train_prompt(self.dims.num_image_tokens)

    def chat_prompt(self, question: str) -> str:
        """The official chat format (system prompt, one user turn), image tags expanded."""
        return deepseek_vl_chat_prompt(self.image_tokens + question)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, dict]:
        return self.processor(image)

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> (decoder image embeddings [B, N, D], vision features [B, V, N, C])."""
        return self.lmm.encode_images_with_features(pixel_values)

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> EmbeddedInputs:
        """The N `<image_placeholder>` tokens take the N image embeddings in order, as upstream
        `prepare_inputs_embeds` does; positions do not move (placeholders get -1 as tokens)."""
        is_image = input_ids == self.image_token_id
        n_slots, n = int(is_image.sum()), image_embeds.shape[0]
        if n_slots != n:
            raise ValueError(
                f"found {n_slots} {DEEPSEEK_VL_IMAGE_TAG} tokens but the image has {n} embeddings; "
                f"the prompt must hold exactly one image expanded to {n} tags "
                "(use adapter.train_prompt / adapter.chat_prompt)"
            )
        text = self.lmm.get_input_embeddings()(input_ids)
        embeds = text.masked_scatter(is_image[:, None], image_embeds.to(text.dtype))[None]
        image_positions = is_image.nonzero().flatten()
        positions = torch.arange(len(input_ids), device=input_ids.device)
        positions = torch.where(is_image, torch.full_like(positions, -1), positions)
        return EmbeddedInputs(embeds, image_positions, positions)


def default_image_processor(config: Any) -> DeepseekVLImageProcessor:
    """A processor from a `MultiModalityConfig` alone (for folders without
    preprocessor_config.json): S = the vision input size; no normalisation when the tower
    normalises itself (the 7B hybrid, or `pixel_mean` in the tower params), else SigLIP's 0.5."""
    params = config.vision_config.params
    in_tower = config.is_hybrid or params.get("pixel_mean") is not None
    mean, std = (None, None) if in_tower else (SIGLIP_MEAN, SIGLIP_STD)
    return DeepseekVLImageProcessor(
        image_size=config.vision_input_size, image_mean=mean, image_std=std
    )


def _load_processor(model_path: str | Path, config: Any) -> DeepseekVLImageProcessor:
    from transformers.utils import cached_file

    # Works for a local folder and for a hub id already in the local cache.
    file = cached_file(
        str(model_path),
        "preprocessor_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if file is not None:
        return DeepseekVLImageProcessor.from_pretrained(file)
    processor = default_image_processor(config)
    logger.warning(
        "no preprocessor_config.json in %s; using defaults from the model config: image_size=%d, "
        "image_mean=%s, image_std=%s (add the model's preprocessor_config.json to override)",
        model_path,
        processor.image_size,
        processor.image_mean,
        processor.image_std,
    )
    return processor


def build_deepseek_vl_adapter(
    *,
    model_path: str | Path,
    torch_dtype: str | torch.dtype = "bfloat16",
    vision_layers: Sequence[int] | None = None,
    high_res_layers: Sequence[int] | None = None,
    eager_features: bool = False,
) -> DeepseekVLAdapter:
    """Load a DeepSeek-VL repo (hub id or local folder) with SDPA attention, its tokenizer and
    image processor (`preprocessor_config.json`, else `default_image_processor`).

    vision_layers / high_res_layers: override the config's selected SigLIP / SAM blocks
    (0-based); None keeps the config's (HG-LMM's defaults for the released configs).
    eager_features: the reference feature path (see `FrozenLMMAdapter`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hg_lmm.lmm.deepseek_vl import register

    register()
    dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    overrides: dict[str, Any] = {}
    if vision_layers is not None:
        overrides["vision_feature_layers"] = list(vision_layers)
    if high_res_layers is not None:
        overrides["high_res_feature_layers"] = list(high_res_layers)
    lmm = AutoModelForCausalLM.from_pretrained(
        model_path,
        torch_dtype=dtype,
        attn_implementation="sdpa",
        low_cpu_mem_usage=True,
        **overrides,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    processor = _load_processor(model_path, lmm.config)
    return DeepseekVLAdapter(
        lmm=lmm, tokenizer=tokenizer, processor=processor, eager_features=eager_features
    )
