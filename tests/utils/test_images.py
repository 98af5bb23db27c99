"""One image conversion for the processors and SAM: PIL, [H, W, 3] arrays, tensors ([3, H, W]
for SAM, [H, W, 3] for the processors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hg_lmm.lmm.processors import to_rgb
from hg_lmm.utils.images import rgb_array


def test_every_input_kind_gives_the_same_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for image in (rgb, Image.fromarray(rgb), torch.from_numpy(rgb).permute(2, 0, 1)):
        np.testing.assert_array_equal(rgb_array(image), rgb)
    for image in (rgb, Image.fromarray(rgb), torch.from_numpy(rgb)):
        np.testing.assert_array_equal(np.asarray(to_rgb(image)), rgb)
    grey = Image.fromarray(rgb[..., 0], mode="L")  # any PIL mode is converted to RGB
    np.testing.assert_array_equal(rgb_array(grey), np.asarray(grey.convert("RGB")))


def test_bad_images_are_named():
    with pytest.raises(ValueError, match="uint8 RGB"):
        rgb_array(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        rgb_array(torch.zeros(4, 4, 3, dtype=torch.uint8))  # channels last
    with pytest.raises(TypeError, match="PIL image"):
        rgb_array("photo.jpg")


def test_tensor_layouts():
    """SAM reads tensors channels first, the LMM processors channels last (as before the two
    conversions were merged); both give the same pixels."""
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    chw, hwc = torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(rgb)
    np.testing.assert_array_equal(rgb_array(chw), rgb)
    np.testing.assert_array_equal(rgb_array(hwc, tensor_layout="HWC"), rgb)
    with pytest.raises(ValueError, match="tensor_layout"):
        rgb_array(hwc, tensor_layout="WHC")
