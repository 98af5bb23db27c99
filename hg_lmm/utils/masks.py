"""Mask geometry shared by every head, the losses and evaluation.

The processors letterbox an image into a square `padded_shape` (ARCHITECTURE.md section 4) and
record where the image sits in a `meta` dict:

    {"padding": {"before_height", "after_height", "before_width", "after_width"},
     "image_shape": {"height", "width"},
     "padded_shape": {"height", "width"}}

`unpad_to_image` maps anything predicted on the padded square back onto the resized image.
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
