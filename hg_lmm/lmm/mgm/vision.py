"""MGM's two vision towers and its patch-info mining, as modules with the released names.

- `CLIPTower` (`vision_tower.vision_tower.vision_model.*`): transformers' `CLIPVisionModel`, the
  low-resolution tower that makes the image tokens (CLIP-L/14-336).
- `ConvNeXtTower` (`vision_tower_aux.vision_stem.*`, `vision_tower_aux.vision_stages.*`): the
  high-resolution tower, the stem and stages of timm's `ConvNeXt` (open_clip's
  convnext_large_d_320 is timm's `convnext_large` trunk, so timm has the official layout). Its
  four stage outputs are resized bilinearly to the first stage's size and concatenated:
  [B, sum(dims), A/4, A/4].
- `mine_patches`: MGM's "patch info mining". Each CLIP token attends over the ConvNeXt features of
  its own p x p patch (p = (A/4) / g), queries through `vlm_uni_query_projector`, keys and values
  through `vlm_uni_aux_projector` / `vlm_uni_val_projector`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXt
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class CLIPTower(nn.Module):
    """Holds `vision_tower` = CLIPVisionModel (the released nesting)."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.vision_tower = CLIPVisionModel(config)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, 3, s, s] -> hidden states ([0] = embeddings, [i + 1] = block i), [B, 1 + n, C]."""
        return self.vision_tower(images, output_hidden_states=True).hidden_states


class ConvNeXtTower(nn.Module):
    """The ConvNeXt stem and stages (module docstring).

    Arguments:
      depths: blocks per stage, (3, 3, 27, 3) for ConvNeXt-L.
      dims: stage widths, (192, 384, 768, 1536) for ConvNeXt-L.
    """

    def __init__(self, *, depths: Sequence[int], dims: Sequence[int]) -> None:
        super().__init__()
        trunk = ConvNeXt(depths=tuple(depths), dims=tuple(dims), num_classes=0)
        # Only the stem and stages are MGM's; the classifier head is dropped.
        self.vision_stem = trunk.stem
        self.vision_stages = trunk.stages

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, A, A] -> [B, sum(dims), A/4, A/4]."""
        x = self.vision_stem(images)
        outs = []
        for stage in self.vision_stages:
            x = stage(x)
            outs.append(x)
        size = outs[0].shape[-2:]
        # Resized in float32, as upstream does.
        resized = [outs[0]] + [
            F.interpolate(o.float(), size=size, mode="bilinear", align_corners=False).to(o.dtype)
            for o in outs[1:]
        ]
        return torch.cat(resized, dim=1)


def mine_patches(
    queries: torch.Tensor,
    aux: torch.Tensor,
    *,
    query_proj: nn.Module,
    key_proj: nn.Module,
    value_proj: nn.Module,
) -> torch.Tensor:
    """Patch-info mining: queries [b, g*g, C] (CLIP tokens, row-major), aux [b, C_aux, h, w]
    (h = w = g * p) -> mined features [b, g*g, C] (each token's attention over its p x p aux
    patch, keys scaled by 1 / sqrt(C))."""
    b, n, _ = queries.shape
    side = int(round(n**0.5))
    if side * side != n or aux.shape[-1] % side or aux.shape[-2] != aux.shape[-1]:
        raise ValueError(
            f"{n} query tokens and aux features {tuple(aux.shape)}: need a square token grid "
            "whose side divides the square aux map"
        )
    p = aux.shape[-1] // side
    patches = aux.permute(0, 2, 3, 1).reshape(b, side, p, side, p, aux.shape[1])
    patches = patches.permute(0, 1, 3, 2, 4, 5).reshape(b, n, p * p, aux.shape[1])
    query = query_proj(queries)
    key = key_proj(patches)
    value = value_proj(patches)
    scores = query[:, :, None] @ (key.transpose(-1, -2) / key.shape[-1] ** 0.5)
    return (scores.nan_to_num().softmax(-1) @ value).mean(2)
