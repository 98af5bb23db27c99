"""The LLaVA-NeXT processor reproduces F-LMM's `CustomLlavaNextImageProcessor` bit for bit."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image

from hg_lmm.lmm.llava_next.processing import (
    LlavaNextImageProcessor,
    fit_size,
    llava_next_train_prompt,
)

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "llava_next")


@lru_cache(maxsize=1)
def fixture() -> tuple[dict, dict[str, np.ndarray]]:
    path = os.path.join(HERE, "record_flmm_processor.py")
    spec = importlib.util.spec_from_file_location("record_flmm_processor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_processor_fixture()


def _processor(settings: dict) -> LlavaNextImageProcessor:
    return LlavaNextImageProcessor(
        image_size=settings["crop_size"]["height"],
        grid_pinpoints=settings["image_grid_pinpoints"],
        image_mean=settings["image_mean"],
        image_std=settings["image_std"],
        rescale_factor=settings["rescale_factor"],
    )


def test_fixture_covers_every_aspect_and_pinpoint():
    record, _ = fixture()
    canvases = {tuple(c["meta"]["padded_shape"].values()) for c in record["cases"].values()}
    assert {(336, 672), (672, 672), (336, 1008), (1008, 336)} <= canvases
    ratios = [c["width"] / c["height"] for c in record["cases"].values()]
    assert min(ratios) < 0.2 and max(ratios) > 5 and 1.0 in ratios


@pytest.mark.parametrize("name", sorted(fixture()[0]["cases"]))
def test_processor_matches_flmm_bit_for_bit(name):
    record, arrays = fixture()
    case = record["cases"][name]
    pixels, meta = _processor(record["settings"])(arrays[f"input/{name}"])
    assert meta == case["meta"]
    assert list(pixels.shape) == case["pixel_values_shape"]
    # The views before normalisation, as uint8, then the float32 values themselves: the sum of
    # F-LMM's float32 pixels was recorded exactly, so equal arrays give an equal float64 sum.
    got = pixels.numpy()
    mean = np.asarray(record["settings"]["image_mean"])[:, None, None]
    std = np.asarray(record["settings"]["image_std"])[:, None, None]
    views = np.round((got.astype(np.float64) * std + mean) * 255).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(views.transpose(0, 2, 3, 1), arrays[f"views/{name}"])
    assert got.astype(np.float64).sum() == case["pixel_values_sum"]


def test_processor_accepts_arrays_and_pil_alike():
    _, arrays = fixture()
    image = arrays["input/portrait_131x97"]
    a, meta_a = LlavaNextImageProcessor()(image)
    b, meta_b = LlavaNextImageProcessor()(Image.fromarray(image))
    assert meta_a == meta_b and (a == b).all()


def test_fit_size_and_bad_pinpoints():
    assert fit_size(120, 160, (336, 672)) == (336, 448)
    assert fit_size(40, 230, (336, 672)) == (117, 672)  # 40 * 672 / 230 = 116.9 rounds up
    with pytest.raises(ValueError, match="multiples of image_size"):
        LlavaNextImageProcessor(grid_pinpoints=[(336, 500)])


def test_train_prompts():
    assert llava_next_train_prompt("vicuna") == (
        "USER: <image>\nPlease give me a description of the image. ASSISTANT:"
    )
    assert llava_next_train_prompt("mistral") == (
        "[INST] <image>\nPlease give me a description of the image. [/INST]"
    )
    with pytest.raises(ValueError, match="unknown template"):
        llava_next_train_prompt("chatml")
