"""Mini-Gemini (MGM-2B, MGM-7B, MGM-7B-HD) as a frozen LMM, on our `hg_lmm.lmm.mgm` model.

The image tokens come from `encode_images` (both towers, patch-info mining, projector), spliced
in at the one `<image>` token as MGM does; the decoder (Gemma or LLaMA) runs with SDPA while
`RowCapture` records the caption rows (hg_lmm.lmm.adapter).

Attention reading, as F-LMM's `FrozenMGM._process_attention`:
- MGM-2B / 7B: the N = g*g image columns on the g x g grid ([L, H, T, g, g]);
- MGM-7B-HD: the global view's g x g columns and the 2x2 crops' columns stitched into a
  2g x 2g grid. attention_grid="fine" (F-LMM's, U-Net+SAM): the global map resized bilinearly
  to 2g (x2), both on 2g x 2g; "base" (the HG head): the stitched map resized bilinearly to g,
  both on g x g. Per layer the global heads come first, then the crops': attn is [2L, H, T, h, w]
  with entry 2l + m (m = 0 global, 1 crops), so a phrase's prior has channel (2l + m) * H + h,
  F-LMM's order.

Vision features (HG head): the selected CLIP blocks of the global view (the only view without a
grid), each with its mined ConvNeXt features, through the projector ([V, g*g, D]). The heads see
`pixel_values` = the processor's A x A image and F-LMM's meta (original pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from hg_lmm.lmm.adapter import FrozenLMMAdapter
from hg_lmm.lmm.base import LMMDims
from hg_lmm.lmm.llava.adapter import LlavaAdapter
from hg_lmm.lmm.mgm.processing import (
    CHAT_TEMPLATES,
    STOP_WORDS,
    MGMImageProcessor,
    add_image_token,
    mgm_tokenizer,
    mgm_train_prompt,
)

ATTENTION_GRIDS = ("fine", "base")


class MGMAdapter(FrozenLMMAdapter):
    """Frozen MGM.

    Arguments:
      lmm: an `MGMGemmaForCausalLM` or `MGMLlamaForCausalLM` (load it with
        attn_implementation="sdpa").
      tokenizer: its tokenizer; `<image>` is added as a special token if missing (F-LMM's way).
      processor: image -> (pixel_values [3, A, A], meta), `MGMImageProcessor`.
      template: "gemma" (MGM-2B) or "vicuna" (MGM-7B, -HD), xtuner's prompt template.
      attention_grid: for MGM-7B-HD, "fine" (U-Net+SAM) or "base" (HG head); module docstring.
      vision_layers: CLIP blocks (0-based) whose global-view outputs form the vision features
        (default: the config's `vision_feature_layers`).
      eager_features: the reference feature path (see `FrozenLMMAdapter`).
    """

    def __init__(
        self,
        *,
        lmm: torch.nn.Module,
        tokenizer: Any,
        processor: Any,
        template: str,
        attention_grid: str = "fine",
        vision_layers: Sequence[int] | None = None,
        eager_features: bool = False,
    ) -> None:
        cfg = lmm.config
        if attention_grid not in ATTENTION_GRIDS:
            raise ValueError(
                f"attention_grid={attention_grid!r}; expected one of {ATTENTION_GRIDS}"
            )
        if cfg.image_grid > 1 and not cfg.image_global:
            raise ValueError("image_grid > 1 without image_global is not supported")
        vision_layers = tuple(cfg.vision_feature_layers if vision_layers is None else vision_layers)
        depth = cfg.vision_tower_config["num_hidden_layers"]
        if any(not 0 <= i < depth for i in vision_layers):
            raise ValueError(
                f"vision_layers {vision_layers} do not fit the {depth}-block CLIP tower; pass "
                "vision_layers= with indices below the tower depth"
            )
        self.train_prompt_text = mgm_train_prompt(template)  # validates the template
        hd = cfg.image_grid > 1
        dims = LMMDims(
            num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            hidden_size=cfg.hidden_size,
            grid=cfg.clip_grid,
            vision_channels=cfg.hidden_size,
            vision_layers=vision_layers,
            image_size=cfg.image_size_aux,
            attn_maps=2 if hd else 1,
            fixed_grid=not hd or attention_grid == "base",
        )
        super().__init__(lmm=lmm, tokenizer=tokenizer, dims=dims, eager_features=eager_features)
        self.processor = processor
        self.template = template
        self.attention_grid = attention_grid
        self.image_token_id = add_image_token(tokenizer)

    @property
    def language_model(self) -> torch.nn.Module:
        return self.lmm

    @property
    def train_prompt(self) -> str:
        return self.train_prompt_text

    def chat_prompt(self, question: str) -> str:
        return CHAT_TEMPLATES[self.template].format(question=question)

    @property
    def stop_token_id(self) -> int:
        stop = STOP_WORDS[self.template]
        if stop is not None and stop in self.tokenizer.get_vocab():
            return self.tokenizer.convert_tokens_to_ids(stop)
        return self.tokenizer.eos_token_id

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, dict]:
        return self.processor(image)

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, A, A] -> (image embeddings [B, N, D], vision features [B, V, g*g, D])."""
        return self.lmm.model.encode_images(pixel_values, self.dims.vision_layers)

    # The one `<image>` token becomes the N image embeddings, as MGM merges them.
    embed_inputs = LlavaAdapter.embed_inputs

    def grid_attention(self, attn: torch.Tensor) -> torch.Tensor:
        """[L, H, T, N] -> [L, H, T, g, g], or for MGM-HD [2L, H, T, h, w] (module docstring)."""
        g, grid = self.dims.grid, self.lmm.config.image_grid
        if grid == 1:
            return super().grid_attention(attn)
        L, H, T = attn.shape[:3]
        coarse = attn[..., : g * g].unflatten(-1, (g, g)).float()
        fine = attn[..., g * g :].reshape(L, H, T, grid, grid, g, g)
        fine = fine.permute(0, 1, 2, 3, 5, 4, 6).reshape(L, H, T, grid * g, grid * g).float()
        if self.attention_grid == "fine":
            coarse = F.interpolate(coarse.flatten(0, 1), scale_factor=grid, mode="bilinear")
            coarse = coarse.view(L, H, T, grid * g, grid * g)
        else:
            fine = F.interpolate(fine.flatten(0, 1), size=(g, g), mode="bilinear")
            fine = fine.view(L, H, T, g, g)
        return torch.stack([coarse, fine], dim=1).flatten(0, 1)


def build_mgm_adapter(
    *,
    model_path: str | Path,
    template: str,
    attention_grid: str = "fine",
    vision_layers: Sequence[int] | None = None,
    torch_dtype: str | torch.dtype = "bfloat16",
    clip_path: str | Path | None = None,
    convnext_path: str | Path | None = None,
    eager_features: bool = False,
) -> MGMAdapter:
    """Load an MGM folder (`load_mgm`: strict, towers from clip_path / convnext_path where the
    folder lacks them) with SDPA attention, its tokenizer (`<image>` added) and F-LMM's processor
    at the folder's `image_size_aux`.

    template: "gemma" (MGM-2B) or "vicuna" (MGM-7B, MGM-7B-HD).
    attention_grid: MGM-7B-HD only, "fine" (U-Net+SAM head, F-LMM's) or "base" (HG head)."""
    from hg_lmm.lmm.mgm.loading import load_mgm

    dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    lmm = load_mgm(model_path, clip_path=clip_path, convnext_path=convnext_path, torch_dtype=dtype)
    return MGMAdapter(
        lmm=lmm,
        tokenizer=mgm_tokenizer(model_path),
        processor=MGMImageProcessor(image_size=lmm.config.image_size_aux),
        template=template,
        attention_grid=attention_grid,
        vision_layers=vision_layers,
        eager_features=eager_features,
    )
