"""Mask geometry shared by every head, the losses and evaluation.

The processors letterbox an image into a square `padded_shape` (docs/architecture.md,
"Preprocessing") and record where the image sits in a `meta` dict:

    {"padding": {"before_height", "after_height", "before_width", "after_width"},
     "image_shape": {"height", "width"},
     "padded_shape": {"height", "width"}}

Two ways back from a map over the padded square to the image (docs/architecture.md, "Crop rules"):

- `unpad_to_image` (HG head): resize to `padded_shape`, then crop the exact image pixels;
- `crop_to_image_grid` (U-Net+SAM head): crop at the map's own resolution, as F-LMM does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F


def _meta_value(meta: Mapping[str, Any], group: str, key: str) -> Any:
    try:
        return meta[group][key]
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"meta record lacks {group}.{key}; expected the processor's record "
            "{'padding': {before_height, after_height, before_width, after_width}, "
            "'image_shape': {height, width}, 'padded_shape': {height, width}}, got "
            f"{meta!r}"
        ) from err


def image_region(meta: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the padded square.

    The image size is rounded half up, as the reference does, so a processor that records
    fractional sizes crops the same pixels.
    """
    top = int(_meta_value(meta, "padding", "before_height"))
    left = int(_meta_value(meta, "padding", "before_width"))
    height = int(_meta_value(meta, "image_shape", "height") + 0.5)
    width = int(_meta_value(meta, "image_shape", "width") + 0.5)
    return top, left, height, width


def unpad_to_image(logits: torch.Tensor, meta: Mapping[str, Any]) -> torch.Tensor:
    """Resize logits predicted on the padded square to `padded_shape`, then crop the image.

    logits: [..., s, s'] at any resolution covering the whole padded square (for example the
      head's [n, 1, s, s] or [n, s, s]). The leading dims are kept.
    meta: the processor record (module docstring).
    Returns [..., h, w] with (h, w) = meta image_shape, in logits' dtype. The resize is bilinear
    with align_corners=False, which is what the reference and the golden fixtures use.
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., h, w], got shape {tuple(logits.shape)}")
    padded = (
        int(_meta_value(meta, "padded_shape", "height")),
        int(_meta_value(meta, "padded_shape", "width")),
    )
    top, left, height, width = image_region(meta)
    if top + height > padded[0] or left + width > padded[1]:
        raise ValueError(
            f"meta image region (top={top}, left={left}, h={height}, w={width}) does not fit in "
            f"padded_shape {padded}; the meta record is inconsistent"
        )
    lead = logits.shape[:-2]
    flat = logits.reshape(1, -1, *logits.shape[-2:])
    if tuple(flat.shape[-2:]) != padded:
        flat = F.interpolate(flat, size=padded, mode="bilinear", align_corners=False)
    out = flat[0, :, top : top + height, left : left + width]
    return out.reshape(*lead, height, width)


def grid_image_region(
    meta: Mapping[str, Any], map_shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image on a map of `map_shape` covering the padded square.

    F-LMM's rule, which its released U-Net+SAM weights were trained with: scale the padding and
    the image size by map / padded, round the start *down* and the length *half up*:

        top    = floor(before_height * m_h / P_h)      left  = floor(before_width * m_w / P_w)
        height = floor(image_height * m_h / P_h + 0.5) width = floor(image_width * m_w / P_w + 0.5)

    e.g. a 500x333 image letterboxed to 336 (image 223x336, 56 rows of padding above) on a 64x64
    map: top 10, height 42, so the crop is 42x64. The expressions are evaluated in the same order
    as the reference (float division of exact integer products), so every rounding matches.
    A length that rounds to 0 (an image thinner than 1/m of the square, where the reference fails)
    is kept at 1 so SAM still gets a prompt.
    """
    padded_h = int(_meta_value(meta, "padded_shape", "height"))
    padded_w = int(_meta_value(meta, "padded_shape", "width"))
    map_h, map_w = int(map_shape[0]), int(map_shape[1])
    top = int(_meta_value(meta, "padding", "before_height") * map_h / padded_h)
    left = int(_meta_value(meta, "padding", "before_width") * map_w / padded_w)
    height = int(_meta_value(meta, "image_shape", "height") * map_h / padded_h + 0.5)
    width = int(_meta_value(meta, "image_shape", "width") * map_w / padded_w + 0.5)
    height, width = max(height, 1), max(width, 1)
    if top + height > map_h or left + width > map_w:
        raise ValueError(
            f"meta image region (top={top}, left={left}, h={height}, w={width} on a "
            f"{map_h}x{map_w} map) does not fit; the meta record {meta!r} is inconsistent"
        )
    return top, left, height, width


def crop_to_image_grid(logits: torch.Tensor, meta: Mapping[str, Any]) -> torch.Tensor:
    """Crop logits over the padded square to the image, at the logits' own resolution.

    logits: [..., m_h, m_w] covering the whole padded square (the U-Net's [n, 64, 64]).
    meta: the processor record (module docstring).
    Returns [..., h, w] with (h, w) from `grid_image_region` (no resize, so no interpolation:
    e.g. [n, 42, 64] for a 500x333 image), a view of `logits` made contiguous.
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., h, w], got shape {tuple(logits.shape)}")
    top, left, height, width = grid_image_region(meta, tuple(logits.shape[-2:]))
    return logits[..., top : top + height, left : left + width].contiguous()
