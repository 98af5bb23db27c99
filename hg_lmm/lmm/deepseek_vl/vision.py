"""DeepSeek-VL vision towers, assembled from timm's ViT and segment_anything's ViTDet.

Module names follow the released state dicts:

    CLIPVisionTower.vision_tower.*              one tower (SigLIP-L/16-384 in 1.3B)
    HybridVisionTower.vision_tower_high.vision_tower.*   SAM-B at 1024 (+ downsamples, neck_hd,
                                                         hd_alpha_downsamples)
    HybridVisionTower.vision_tower_low.vision_tower.*    SigLIP-L at 384
    HybridVisionTower.{high,low}_layer_norm.*   present in the checkpoints, unused by the forward
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import ImageEncoderViT
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.transforms.functional import InterpolationMode, resize

from hg_lmm.lmm.deepseek_vl.configuration import (
    SAMSettings,
    SigLIPSettings,
    sam_settings,
    siglip_settings,
    tower_kind,
)


def build_siglip(settings: SigLIPSettings) -> VisionTransformer:
    """timm SigLIP ViT (MAP head, no class token); its keys equal the official `vision_tower.*`."""
    return VisionTransformer(
        img_size=settings.image_size,
        patch_size=settings.patch_size,
        embed_dim=settings.width,
        depth=settings.depth,
        num_heads=settings.heads,
        mlp_ratio=settings.mlp_ratio,
        class_token=False,
        global_pool="map",
        num_classes=0,
        # Weights always come from a checkpoint (or the tiny builders' own init): skip timm's
        # slow trunc-normal init, as the official code does.
        weight_init="skip",
    )


class SamHDEncoder(ImageEncoderViT):
    """SAM ViTDet image encoder plus DeepSeek-VL's high-resolution extras.

    Arguments:
      settings: resolved tower sizes.

    Extras over `ImageEncoderViT` (names as released): `downsamples` (bias-free 3x3 stride-2
    convs, out_chans -> downsample_channels), `neck_hd` (a second neck, for the first
    global-attention block) and `hd_alpha_downsamples` (the scalar weight of that second path).
    """

    def __init__(self, settings: SAMSettings) -> None:
        if not any(0 <= i < settings.depth for i in settings.global_attn_indexes):
            raise ValueError(
                f"SAM tower global_attn_indexes {settings.global_attn_indexes} name no block of "
                f"{settings.depth}; the high-res path needs at least one global-attention block"
            )
        super().__init__(
            img_size=settings.image_size,
            patch_size=settings.patch_size,
            embed_dim=settings.width,
            depth=settings.depth,
            num_heads=settings.heads,
            mlp_ratio=settings.mlp_ratio,
            out_chans=settings.out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=settings.window_size,
            global_attn_indexes=settings.global_attn_indexes,
        )
        self.settings = settings
        convs, c_in = [], settings.out_chans
        for c_out in settings.downsample_channels:
            convs.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False))
            c_in = c_out
        self.downsamples = nn.Sequential(*convs)
        self.neck_hd = copy.deepcopy(self.neck)
        self.hd_alpha_downsamples = nn.Parameter(torch.zeros(1))

    def _project(self, tokens: torch.Tensor, neck: nn.Module) -> torch.Tensor:
        """[B, h, w, width] block output -> neck -> bilinear resize -> downsamples: [B, C, g, g]."""
        x = neck(tokens.permute(0, 3, 1, 2))
        size = self.settings.downsample_input_size
        # The official tower resizes in float32 whatever the model dtype.
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
        return self.downsamples(x.to(tokens.dtype))

    def _blocks(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        """Raw outputs [B, h, w, width] of blocks 0..last."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        outs = []
        for blk in self.blocks[: last + 1]:
            x = blk(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, C, g, g]: last block's projection + alpha * first global block's."""
        return self.forward_with_intermediates(x, (), with_final=True)[0]

    def forward_with_intermediates(
        self, x: torch.Tensor, indices: Sequence[int], with_final: bool
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(forward output [B, C, g, g] or None, [B, C, g, g] per selected block).

        HG-LMM projects every selected block with the tower's own `neck` (not `neck_hd`), without
        the alpha-weighted second path.
        """
        last = len(self.blocks) - 1 if with_final else max(indices)
        outs = self._blocks(x, last)
        picked = [self._project(outs[i], self.neck) for i in indices]
        if not with_final:
            return None, picked
        first_global = next(i for i, blk in enumerate(self.blocks) if blk.window_size == 0)
        hd = self._project(outs[first_global], self.neck_hd)
        return self._project(outs[-1], self.neck) + hd * self.hd_alpha_downsamples, picked


class CLIPVisionTower(nn.Module):
    """One vision tower (official class name): optional input normalisation, then the backbone.

    Arguments (the released `params`; unknown keys are ignored like upstream does):
      model_name: 'siglip_*' (timm ViT) or 'sam_*' (SAM ViTDet with DeepSeek-VL extras).
      pixel_mean, pixel_std: normalisation applied inside the tower, or None for none.
      other keys: tower sizes overriding the preset (see configuration.py).
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__()
        self.kind = tower_kind(params)
        if self.kind == "siglip":
            self.settings = siglip_settings(params)
            self.vision_tower = build_siglip(self.settings)
        else:
            self.settings = sam_settings(params)
            self.vision_tower = SamHDEncoder(self.settings)
        mean, std = params.get("pixel_mean"), params.get("pixel_std")
        # Plain tuples, not buffers: they are config, and buffers would complicate meta loading.
        norm = mean is not None and std is not None
        self.pixel_mean = tuple(float(m) for m in mean) if norm else None
        self.pixel_std = tuple(float(s) for s in std) if norm else None

    @property
    def image_size(self) -> int:
        return self.settings.image_size

    @property
    def out_channels(self) -> int:
        return self.settings.width if self.kind == "siglip" else self.settings.out_channels

    @property
    def depth(self) -> int:
        return self.settings.depth

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if self.pixel_mean is None:
            return images
        mean = torch.tensor(self.pixel_mean, device=images.device, dtype=images.dtype)
        std = torch.tensor(self.pixel_std, device=images.device, dtype=images.dtype)
        return (images - mean[:, None, None]) / std[:, None, None]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> SigLIP [B, N, C] (after the final norm) or SAM [B, N, C] (flattened)."""
        final, _ = self.forward_with_intermediates(images, (), with_final=True)
        return final

    def forward_with_intermediates(
        self, images: torch.Tensor, indices: Sequence[int], with_final: bool = False
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """One pass giving the tower output (if `with_final`) and selected block features.

        Shapes: images [B, 3, S, S] -> (final [B, N, C] or None, [[B, N, C]] per index).
        SigLIP intermediates are raw block outputs (no final norm); SAM ones are each block
        through neck, resize and downsamples, flattened row-major.
        """
        images = self.normalize(images)
        indices = list(indices)
        if self.kind == "sam":
            final, picked = self.vision_tower.forward_with_intermediates(
                images, indices, with_final
            )
            flat = [p.flatten(2).transpose(1, 2) for p in picked]
            return (None if final is None else final.flatten(2).transpose(1, 2)), flat
        vit = self.vision_tower
        if not indices:
            return vit.forward_features(images), []
        if not with_final:
            picked = vit.forward_intermediates(
                images,
                indices=indices,
                norm=False,
                stop_early=True,
                output_fmt="NLC",
                intermediates_only=True,
            )
            return None, _reorder(picked, indices)
        final, picked = vit.forward_intermediates(
            images, indices=indices, norm=False, output_fmt="NLC"
        )
        return final, _reorder(picked, indices)


def _reorder(picked: list[torch.Tensor], indices: Sequence[int]) -> list[torch.Tensor]:
    """timm returns intermediates in block order without repeats; map them back to `indices`."""
    by_block = dict(zip(sorted(set(indices)), picked))
    return [by_block[i] for i in indices]


class HybridVisionTower(nn.Module):
    """The 7B hybrid tower (official class name): SAM at high resolution + SigLIP at low.

    Arguments (the released `params`):
      high_res_cfg, low_res_cfg: params of the two CLIPVisionTowers; `output_dim` sizes the two
        (unused) layer norms and defaults to each tower's output width.
      concat_type: only "tuple" (what the released models and the hybrid aligner use).
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__()
        concat = params.get("concat_type", "tuple")
        if concat != "tuple":
            raise ValueError(
                f"HybridVisionTower concat_type {concat!r} is not supported; the released models "
                "use 'tuple'"
            )
        high, low = params["high_res_cfg"], params["low_res_cfg"]
        self.vision_tower_high = CLIPVisionTower(high)
        self.vision_tower_low = CLIPVisionTower(low)
        if self.vision_tower_high.kind != "sam" or self.vision_tower_low.kind != "siglip":
            raise ValueError(
                "HybridVisionTower expects a 'sam_*' high_res_cfg and 'siglip_*' low_res_cfg"
            )
        hi_grid = self.vision_tower_high.settings.grid
        lo_grid = self.vision_tower_low.settings.grid
        if hi_grid != lo_grid:
            raise ValueError(
                f"the high-res tower gives a {hi_grid}x{hi_grid} map but SigLIP a "
                f"{lo_grid}x{lo_grid} grid; set high_res_cfg.downsample_input_size so they match"
            )
        # In the checkpoints; the released forward never applies them.
        self.high_layer_norm = nn.LayerNorm(
            high.get("output_dim", self.vision_tower_high.out_channels)
        )
        self.low_layer_norm = nn.LayerNorm(
            low.get("output_dim", self.vision_tower_low.out_channels)
        )
        self.low_res_size = self.vision_tower_low.image_size

    def low_res(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 3, s, s], antialiased bilinear (torchvision Resize's default)."""
        size = [self.low_res_size, self.low_res_size]
        return resize(images, size, interpolation=InterpolationMode.BILINEAR, antialias=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> (high [B, N, C_high], low [B, N, C_low])."""
        return self.vision_tower_high(images), self.vision_tower_low(self.low_res(images))

    def forward_with_intermediates(
        self,
        images: torch.Tensor,
        high_indices: Sequence[int],
        low_indices: Sequence[int],
        with_final: bool = False,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, list[torch.Tensor], list[torch.Tensor]]:
        """(forward output or None, high features [[B, N, C]], low features [[B, N, C]])."""
        hi_final, hi = self.vision_tower_high.forward_with_intermediates(
            images, high_indices, with_final
        )
        lo_final, lo = self.vision_tower_low.forward_with_intermediates(
            self.low_res(images), low_indices, with_final
        )
        return ((hi_final, lo_final) if with_final else None), hi, lo


def build_vision_model(cls: str, params: Mapping[str, Any]) -> nn.Module:
    """The vision model named by `vision_config.cls`."""
    if cls == "CLIPVisionTower":
        return CLIPVisionTower(params)
    if cls == "HybridVisionTower":
        return HybridVisionTower(params)
    raise ValueError(
        f"vision_config.cls {cls!r} is not supported; expected 'CLIPVisionTower' or "
        "'HybridVisionTower'"
    )
