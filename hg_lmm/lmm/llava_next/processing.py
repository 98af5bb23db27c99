"""LLaVA-NeXT's any-resolution image processor and prompts, as F-LMM trains them.

See docs/architecture.md, "LLaVA-NeXT". An image becomes a stack of `S x S` views:

- view 0, the *base* image: the whole image resized (stretched, aspect ratio not kept) to S x S;
- views 1.., the *crops*: the image resized to fit the best grid pinpoint (transformers'
  `select_best_resolution`) keeping its aspect ratio, centred on that canvas with black (0) pixels
  (`pad // 2` before, the rest after: F-LMM's fix of the stock processor, which pads
  `pad // 2` on both sides), then cut into S x S crops row-major.

Every view is rescaled and normalised in float32 as transformers' image processors do, so the
values equal F-LMM's `CustomLlavaNextImageProcessor` bit for bit (tests/fixtures/llava_next).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution

from hg_lmm.lmm.processors import CLIP_MEAN, CLIP_STD, letterbox_meta, to_rgb
from hg_lmm.utils.images import ImageLike

IMAGE_TOKEN = "<image>"
# llava-hf/llava-v1.6-*-hf preprocessor_config.json, (height, width).
DEFAULT_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

# xtuner's templates (PROMPT_TEMPLATE.vicuna / .mistral), INSTRUCTION only (no SYSTEM), around
# F-LMM's prompt "<image>\nPlease give me a description of the image.".
_QUESTION = "<image>\nPlease give me a description of the image."
PROMPT_TEMPLATES = {
    "vicuna": "USER: {input} ASSISTANT:",
    "mistral": "[INST] {input} [/INST]",
}
# Chat prompts: the same INSTRUCTION around the question; generation stops at the eos token.
CHAT_TEMPLATES = {
    k: v.replace("{input}", "<image>\n{question}") for k, v in PROMPT_TEMPLATES.items()
}


def llava_next_train_prompt(template: str) -> str:
    """The training / `extract` prompt of a template ("vicuna" or "mistral"), for configs:
    `prompt=dict(type=llava_next_train_prompt, template="mistral")`."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(
            f"unknown template {template!r}; expected one of {sorted(PROMPT_TEMPLATES)}"
        )
    return PROMPT_TEMPLATES[template].format(input=_QUESTION)


def fit_size(height: int, width: int, target: Sequence[int]) -> tuple[int, int]:
    """(h, w) of an image resized to fit `target` (h, w) keeping its aspect ratio; the long side
    (relative to the target) fills it, the other is rounded up and capped (transformers'
    `_get_patch_output_size`)."""
    th, tw = int(target[0]), int(target[1])
    scale_w, scale_h = tw / width, th / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), th), tw
    return th, min(math.ceil(width * scale_h), tw)


def normalize_float32(
    array: np.ndarray, mean: Sequence[float], std: Sequence[float], rescale_factor: float
) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W], rescaled then normalised in float32 (the
    order and precision of transformers' `rescale` and `normalize`, hence bit-equal to them)."""
    x = (array.astype(np.float64) * rescale_factor).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


class LlavaNextImageProcessor:
    """Any-resolution processing for LLaVA-NeXT (module docstring).

    Arguments:
      image_size: S, the side of every view (336 for LLaVA-v1.6).
      grid_pinpoints: candidate canvas sizes (h, w), multiples of S.
      image_mean, image_std: CLIP normalisation.
      rescale_factor: applied before normalising.

    Call: image -> (pixel_values [1 + r*c, 3, S, S] float32, meta), where meta is F-LMM's record
      {"padding", "image_shape" (the resized image on the canvas), "padded_shape" (the canvas),
      "grid_shape" {height: r, width: c} (crops), "ori_shape" {height, width}}.
    """

    def __init__(
        self,
        *,
        image_size: int = 336,
        grid_pinpoints: Sequence[Sequence[int]] = DEFAULT_GRID_PINPOINTS,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        rescale_factor: float = 1 / 255,
    ) -> None:
        self.image_size = int(image_size)
        self.grid_pinpoints = tuple(tuple(int(v) for v in p) for p in grid_pinpoints)
        bad = [p for p in self.grid_pinpoints if p[0] % self.image_size or p[1] % self.image_size]
        if bad or not self.grid_pinpoints:
            raise ValueError(
                f"grid_pinpoints {bad or '()'} must be a non-empty list of (h, w) multiples of "
                f"image_size={self.image_size}"
            )
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.rescale_factor = float(rescale_factor)

    def best_resolution(self, height: int, width: int) -> tuple[int, int]:
        """The canvas (h, w) an image of (height, width) is fitted on."""
        best = select_best_resolution((height, width), [list(p) for p in self.grid_pinpoints])
        return int(best[0]), int(best[1])

    def __call__(self, image: ImageLike) -> tuple[torch.Tensor, dict[str, Any]]:
        """image (PIL or [H, W, 3] uint8) -> (pixel_values [P, 3, S, S] float32, meta)."""
        image = to_rgb(image)
        width, height = image.size
        s = self.image_size
        canvas_hw = self.best_resolution(height, width)
        new_h, new_w = fit_size(height, width, canvas_hw)
        meta = letterbox_meta(new_h, new_w)
        # letterbox_meta centres on a square; the canvas is a rectangle, so each side is redone.
        pad_h, pad_w = canvas_hw[0] - new_h, canvas_hw[1] - new_w
        meta["padding"] = {
            "before_height": pad_h // 2,
            "after_height": pad_h - pad_h // 2,
            "before_width": pad_w // 2,
            "after_width": pad_w - pad_w // 2,
        }
        meta["padded_shape"] = {"height": canvas_hw[0], "width": canvas_hw[1]}
        rows, cols = canvas_hw[0] // s, canvas_hw[1] // s
        meta["grid_shape"] = {"height": rows, "width": cols}
        meta["ori_shape"] = {"height": height, "width": width}

        resized = np.asarray(image.resize((new_w, new_h), resample=Image.BICUBIC))
        canvas = np.zeros((canvas_hw[0], canvas_hw[1], 3), dtype=np.uint8)
        top, left = meta["padding"]["before_height"], meta["padding"]["before_width"]
        canvas[top : top + new_h, left : left + new_w] = resized
        crops = canvas.reshape(rows, s, cols, s, 3).transpose(0, 2, 1, 3, 4).reshape(-1, s, s, 3)
        base = np.asarray(image.resize((s, s), resample=Image.BICUBIC))
        views = np.concatenate([base[None], crops])
        pixels = normalize_float32(views, self.image_mean, self.image_std, self.rescale_factor)
        return torch.from_numpy(pixels), meta
