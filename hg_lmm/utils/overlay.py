"""Mask overlays: one colour per phrase, outlines and a numbered legend.

The one drawing module of the project: the chat CLI, the web demo and the eval CLIs' `--save-vis`
all draw with it, so a phrase has the same colour (`phrase_color(k)`) in the printed answer, the
web page and the saved PNG. Drawing uses PIL and numpy only (no matplotlib figure), so it is fast
enough to run per request and gives pixel-exact masks at the image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hg_lmm.utils.arrays import as_numpy

# Distinct, saturated colours (Tableau 10 first, then brighter extras); phrase k gets entry k
# modulo the length, so numbering (1-based in the legend) and colour always agree.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (255, 215, 0), (0, 255, 127), (255, 0, 255), (0, 128, 255), (255, 64, 64), (128, 255, 0),
)  # fmt: skip


def phrase_color(k: int) -> tuple[int, int, int]:
    """RGB colour of phrase `k` (0-based)."""
    return PALETTE[k % len(PALETTE)]


def hex_color(k: int) -> str:
    """`#rrggbb` of phrase `k` (0-based), for HTML and JSON."""
    return "#{:02x}{:02x}{:02x}".format(*phrase_color(k))


def _as_bool_masks(masks: Any, height: int, width: int) -> np.ndarray:
    array = as_numpy(masks)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (height, width):
        raise ValueError(
            f"masks of shape {tuple(array.shape)} do not fit a {width}x{height} image; expected "
            f"[n, {height}, {width}] masks at the original image size"
        )
    return array != 0


def _upscaled(
    image: Image.Image, masks: np.ndarray, min_width: int
) -> tuple[Image.Image, np.ndarray]:
    """Image and masks enlarged by the smallest integer factor that makes the image at least
    `min_width` wide (nearest neighbour, so every mask pixel stays a visible block)."""
    factor = -(-min_width // image.width) if image.width < min_width else 1
    if factor == 1:
        return image, masks
    big = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    return big, masks.repeat(factor, axis=1).repeat(factor, axis=2)


def _font_size(width: int) -> int:
    return max(12, min(48, width // 40))


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of a bool [H, W] mask: inside the mask, within `width` pixels of outside
    (the image border counts as outside). Returns bool [H, W]."""
    inner = mask.copy()
    for _ in range(max(1, width)):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return mask & ~inner


def _font(size: int) -> ImageFont.ImageFont:
    try:  # Pillow >= 10.1 ships a scalable default font (needs FreeType)
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, max_width: int) -> str:
    """`text`, cut with an ellipsis so that it is at most `max_width` pixels wide."""
    if _text_width(draw, text, font) <= max_width:
        return text
    while text and _text_width(draw, text + "…", font) > max_width:
        text = text[:-1]
    return text + "…"


def legend(labels: Sequence[str], width: int, *, font_size: int | None = None) -> Image.Image:
    """A white strip `width` pixels wide: one row per label, a colour swatch and `k. label`
    (k from 1). Labels too long for the strip are cut with an ellipsis."""
    size = font_size or _font_size(width)
    font = _font(size)
    row, pad = size + size // 2, size // 2
    strip = Image.new("RGB", (width, pad * 2 + row * max(1, len(labels))), "white")
    draw = ImageDraw.Draw(strip)
    if not labels:
        draw.text((pad, pad), "no phrase to ground", fill=(90, 90, 90), font=font)
    for k, label in enumerate(labels):
        y = pad + k * row
        draw.rectangle([pad, y + 2, pad + size, y + 2 + size], fill=phrase_color(k))
        text = _fit(draw, f"{k + 1}. {label}", font, width - 3 * pad - size)
        draw.text((2 * pad + size, y + 1), text, fill=(0, 0, 0), font=font)
    return strip


def draw_overlay(
    image: Image.Image,
    masks: Any,
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.45,
    outline_width: int | None = None,
    show_legend: bool = True,
    min_width: int = 512,
) -> Image.Image:
    """The image with each mask blended in its phrase colour and outlined, plus a legend.

    Arguments:
      image: the RGB image (any mode is converted).
      masks: [n, H, W] (or one [H, W]) bool / 0-1 masks at the image's size, numpy or torch.
      labels: n phrase texts for the legend (default "mask 1", "mask 2", ...).
      alpha: opacity of the mask fill (outlines are opaque).
      outline_width: in pixels; default scales with the image (1 px per 250 px of its short side).
      show_legend: append the legend strip below the image.
      min_width: a narrower image is enlarged by an integer factor (nearest neighbour) so that
        the outlines and the legend stay readable.

    Returns:
      An RGB image of width k*W and height k*H (+ the legend's height), k >= 1 the enlargement.
      Later masks are drawn over earlier ones where they overlap.
    """
    rgb = image.convert("RGB")
    bool_masks = _as_bool_masks(masks, rgb.height, rgb.width)
    labels = (
        list(labels) if labels is not None else [f"mask {k + 1}" for k in range(len(bool_masks))]
    )
    if len(labels) != len(bool_masks):
        raise ValueError(f"{len(labels)} labels for {len(bool_masks)} masks")
    rgb, bool_masks = _upscaled(rgb, bool_masks, min_width)
    width, height = rgb.size
    line = outline_width or max(1, round(min(width, height) / 250))
    canvas = np.asarray(rgb, dtype=np.float32).copy()
    for k, mask in enumerate(bool_masks):
        color = np.asarray(phrase_color(k), dtype=np.float32)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * color
        canvas[mask_outline(mask, line)] = color
    out = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    if not show_legend:
        return out
    strip = legend(labels, width)
    full = Image.new("RGB", (width, height + strip.height), "white")
    full.paste(out, (0, 0))
    full.paste(strip, (0, height))
    return full


def compare_overlay(
    image: Image.Image,
    pred: Any,
    target: Any,
    labels: Sequence[str],
    *,
    title: str | None = None,
) -> Image.Image:
    """Prediction and ground truth side by side, mask k in the same colour in both panels.

    Arguments:
      image: the RGB image.
      pred, target: [n, H, W] bool masks at the image's size (mask k of both is phrase k).
      labels: n phrase texts (one shared legend below both panels).
      title: an optional line above the panels (e.g. the sample id).

    Returns:
      An RGB image of two panels (each as `draw_overlay` enlarges it) with a small gap: headers
      "prediction" | "ground truth", the panels, then the legend.
    """
    panels = [draw_overlay(image, m, labels, show_legend=False) for m in (pred, target)]
    width, height = panels[0].size
    size = _font_size(width)
    font = _font(size)
    header, gap = size * 2, size // 2
    total = 2 * width + gap
    strip = legend(labels, total, font_size=size)
    top = header if title is None else 2 * header
    full = Image.new("RGB", (total, top + height + strip.height), "white")
    draw = ImageDraw.Draw(full)
    if title is not None:
        title = _fit(draw, title, font, total - size)
        draw.text((size // 2, size // 2), title, fill=(0, 0, 0), font=font)
    for i, (name, panel) in enumerate(zip(("prediction", "ground truth"), panels)):
        left = i * (width + gap)
        draw.text((left + size // 2, top - header + size // 2), name, fill=(0, 0, 0), font=font)
        full.paste(panel, (left, top))
    full.paste(strip, (0, top + height))
    return full


__all__ = [
    "PALETTE",
    "compare_overlay",
    "draw_overlay",
    "hex_color",
    "legend",
    "mask_outline",
    "phrase_color",
]
