"""Overlays: exact blending, outlines, the legend, enlargement of small images, side by side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hg_lmm.utils.overlay import (
    PALETTE,
    compare_overlay,
    draw_overlay,
    hex_color,
    mask_outline,
    phrase_color,
)


def _image(width: int = 600, height: int = 400) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_colours_are_distinct_and_cycle() -> None:
    assert len(set(PALETTE)) == len(PALETTE)
    assert phrase_color(len(PALETTE)) == phrase_color(0)
    assert hex_color(0) == "#1f77b4" and hex_color(1) == "#ff7f0e"


def test_outline_of_a_square_is_its_ring() -> None:
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    ring = mask_outline(mask, 1)
    assert ring.sum() == 12  # a 4x4 square minus its 2x2 inside
    assert not ring[2:4, 2:4].any() and ring[1, 1:5].all() and ring[4, 1:5].all()
    # The image border counts as outside: a full mask is outlined along the border.
    full = mask_outline(np.ones((5, 5), bool), 1)
    assert full.sum() == 16 and not full[1:4, 1:4].any()
    assert mask_outline(mask, 2).sum() == 16  # 2 px wide: the whole 4x4 square


def test_fill_is_an_exact_blend_and_outside_is_untouched() -> None:
    image = _image()
    masks = torch.zeros(2, 400, 600, dtype=torch.bool)
    masks[0, 50:150, 100:300] = True
    masks[1, 200:380, 400:590] = True
    out = np.asarray(draw_overlay(image, masks, ["a", "b"], alpha=0.5, show_legend=False))
    src = np.asarray(image).astype(np.float32)
    assert out.shape == (400, 600, 3)
    for k in range(2):
        mask = masks[k].numpy()
        inner = mask & ~mask_outline(mask, 2)  # 400 px short side -> 2 px outlines
        expected = np.round(0.5 * src + 0.5 * np.asarray(phrase_color(k), np.float32))
        assert np.array_equal(out[inner], expected[inner].astype(np.uint8))
        assert (out[mask_outline(mask, 2)] == phrase_color(k)).all()
    outside = ~masks.any(0).numpy()
    assert np.array_equal(out[outside], np.asarray(image)[outside])


def test_legend_lists_every_phrase_below_the_image() -> None:
    image = _image()
    masks = np.zeros((3, 400, 600), bool)
    bare = draw_overlay(image, masks, ["x", "y", "z"], show_legend=False)
    full = draw_overlay(image, masks, ["x", "y", "z"])
    assert full.width == 600 and full.height > 400
    assert np.array_equal(np.asarray(full)[:400], np.asarray(bare))
    strip = np.asarray(full)[400:]
    for k in range(3):  # one swatch per phrase, in its colour
        assert (strip == phrase_color(k)).all(-1).sum() > 50
    longer = draw_overlay(image, np.zeros((6, 400, 600), bool), list("abcdef"))
    assert longer.height > full.height


def test_small_images_are_enlarged_by_an_integer_factor() -> None:
    image = _image(64, 85)
    mask = np.zeros((85, 64), bool)
    mask[10:20, 5:9] = True
    out = draw_overlay(image, mask, ["thing"], show_legend=False, outline_width=1)
    assert out.size == (512, 680)  # 8x, the smallest factor reaching 512 px
    big = np.asarray(out)
    assert np.array_equal(big[::8, ::8][~mask], np.asarray(image)[~mask])  # blocks of 8x8
    assert (big[80:160, 40:72] != np.asarray(image.resize((512, 680), 0))[80:160, 40:72]).any()


def test_bad_inputs_say_what_is_wrong() -> None:
    image = _image()
    with pytest.raises(ValueError, match=r"\[n, 400, 600\]"):
        draw_overlay(image, np.zeros((1, 40, 60), bool))
    with pytest.raises(ValueError, match="2 labels for 1 masks"):
        draw_overlay(image, np.zeros((1, 400, 600), bool), ["a", "b"])


def test_compare_puts_prediction_left_and_ground_truth_right() -> None:
    image = _image()
    pred = np.zeros((1, 400, 600), bool)
    gt = np.zeros((1, 400, 600), bool)
    pred[0, :100] = True
    gt[0, 300:] = True
    out = compare_overlay(image, pred, gt, ["phrase"], title="sample 0")
    left = draw_overlay(image, pred, ["phrase"], show_legend=False)
    right = draw_overlay(image, gt, ["phrase"], show_legend=False)
    array = np.asarray(out)
    gap = out.width - 1200
    assert 0 < gap < 30
    # Find the panels' top row: the first row equal to the left panel's first row.
    top = next(y for y in range(out.height) if np.array_equal(array[y, :600], np.asarray(left)[0]))
    assert np.array_equal(array[top : top + 400, :600], np.asarray(left))
    assert (array[top : top + 400, 600 : 600 + gap] == 255).all()
    assert np.array_equal(array[top : top + 400, 600 + gap :], np.asarray(right))
    assert out.height > top + 400  # the legend below
