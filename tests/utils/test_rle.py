"""COCO RLE round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hg_lmm.utils.rle import (
    mask_to_rle,
    masks_to_rles,
    rle_area,
    rle_bbox,
    rle_to_mask,
)


def test_round_trip_is_exact_and_json_safe() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((7, 11)) < 0.4
    rle = mask_to_rle(mask)
    assert rle["size"] == [7, 11] and isinstance(rle["counts"], str)
    reloaded = json.loads(json.dumps(rle))
    np.testing.assert_array_equal(rle_to_mask(reloaded), mask)
    assert rle_to_mask(reloaded).dtype == np.bool_
    assert rle_area(rle) == int(mask.sum())


def test_layouts_and_inputs_agree() -> None:
    # A non-square mask catches a transposed (C- vs Fortran-order) encoding.
    mask = np.zeros((3, 5), dtype=np.uint8)
    mask[0, 1:4] = 1
    mask[2, 4] = 1
    expected = mask_to_rle(mask)
    assert mask_to_rle(np.asfortranarray(mask)) == expected
    assert mask_to_rle(torch.from_numpy(mask).bool()) == expected
    assert mask_to_rle(mask * 7) == expected  # nonzero is foreground
    assert rle_bbox(expected) == [1.0, 0.0, 4.0, 3.0]  # x, y, w, h


def test_stack_and_uncompressed_counts() -> None:
    masks = np.zeros((2, 2, 3), dtype=bool)
    masks[0, :, 0] = True
    rles = masks_to_rles(masks)
    assert len(rles) == 2 and rle_area(rles[1]) == 0
    # Uncompressed RLE (column-major runs, starting with background): 2x3 with column 0 set.
    uncompressed = {"size": [2, 3], "counts": [0, 2, 4]}
    np.testing.assert_array_equal(rle_to_mask(uncompressed), masks[0])
    with pytest.raises(ValueError, match="one \\[H, W\\] mask"):
        mask_to_rle(masks)
    with pytest.raises(ValueError, match="size"):
        rle_to_mask({"counts": "abc"})
