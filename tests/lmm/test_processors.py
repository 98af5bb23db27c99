"""The DeepSeek-VL and LLaVA processors reproduce the golden fixture; the chat prompt format."""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image

from hg_lmm.lmm.deepseek_vl.processing import (
    DEEPSEEK_VL_IMAGE_TAG,
    DEEPSEEK_VL_SYSTEM_PROMPT,
    DeepseekVLImageProcessor,
    deepseek_vl_chat_prompt,
    encode_deepseek_vl_prompt,
)
from hg_lmm.lmm.llava.processing import LlavaImageProcessor
from hg_lmm.lmm.processors import CLIP_MEAN, CLIP_STD, expand_image_tokens, pad_to_square

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "processors")

# The fixture's variants, as processors (mean/std are the fixture's test parameters).
PROCESSORS = {
    "deepseek_vl_1_3b": lambda: DeepseekVLImageProcessor(
        image_size=384, image_mean=(0.5,) * 3, image_std=(0.5,) * 3
    ),
    "deepseek_vl_7b": lambda: DeepseekVLImageProcessor(
        image_size=1024, image_mean=CLIP_MEAN, image_std=CLIP_STD
    ),
    "deepseek_vl_no_norm_1024": lambda: DeepseekVLImageProcessor(
        image_size=1024, image_mean=None, image_std=None
    ),
    "llava_1_5_7b": lambda: LlavaImageProcessor(image_size=336),
}


def _cases() -> dict:
    with open(os.path.join(HERE, "processors.json")) as f:
        return json.load(f)


@lru_cache(maxsize=1)
def load_expected() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs by name [H, W, 3] uint8, expected padded images by case key [3, S, S] uint8)."""
    # The decoder lives next to the fixture, with the script that wrote it.
    spec = importlib.util.spec_from_file_location(
        "make_fixture", os.path.join(HERE, "make_fixture.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load()


@pytest.mark.parametrize("key", sorted(_cases()))
def test_processor_matches_golden(key):
    case = _cases()[key]
    variant, name = key.split("/")
    inputs, expected = load_expected()
    pixel_values, meta = PROCESSORS[variant]()(inputs[name])

    assert meta == case["meta"]
    assert list(pixel_values.shape) == case["pixel_values_shape"]
    assert pixel_values.dtype == torch.float32
    total = pixel_values.double().sum().item()
    assert total == pytest.approx(case["pixel_values_sum"], rel=1e-2)
    mean = torch.tensor(case["image_mean"], dtype=torch.float64)[:, None, None]
    std = torch.tensor(case["image_std"], dtype=torch.float64)[:, None, None]
    restored = ((pixel_values.double() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    diff = (restored.int() - torch.from_numpy(expected[key]).int()).abs()
    assert diff.max().item() <= 1, f"{key}: {int((diff > 1).sum())} pixels off by more than 1"


def test_processors_accept_pil_and_arrays():
    inputs, _ = load_expected()
    array = inputs["portrait_131x97"]
    proc = PROCESSORS["llava_1_5_7b"]()
    a, meta_a = proc(array)
    b, meta_b = proc(Image.fromarray(array))
    assert torch.equal(a, b) and meta_a == meta_b
    with pytest.raises(ValueError, match="uint8"):
        proc(array.astype(np.float32))


def test_pad_to_square_centres_the_short_side():
    image = Image.new("RGB", (5, 2), (255, 0, 0))
    square, meta = pad_to_square(image, (1, 2, 3))
    assert square.size == (5, 5)
    # pad = 3 rows: 1 before, 2 after
    assert meta["padding"] == {
        "before_height": 1,
        "after_height": 2,
        "before_width": 0,
        "after_width": 0,
    }
    assert meta["image_shape"] == {"height": 2, "width": 5}
    arr = np.asarray(square)
    assert (arr[0] == (1, 2, 3)).all() and (arr[1:3] == (255, 0, 0)).all()
    assert (arr[3:] == (1, 2, 3)).all()


def test_deepseek_min_size_and_background():
    proc = DeepseekVLImageProcessor(image_size=64, image_mean=None, image_std=None, min_size=14)
    pixels, meta = proc(np.zeros((2, 200, 3), dtype=np.uint8))
    assert meta["image_shape"] == {"height": 14, "width": 64}
    assert pixels.shape == (3, 64, 64)
    assert torch.allclose(pixels[:, 0, 0], torch.full((3,), 127 / 255))


def test_deepseek_processor_config_round_trip(tmp_path):
    proc = DeepseekVLImageProcessor(image_size=32, image_mean=None, image_std=None)
    proc.save_pretrained(tmp_path)
    again = DeepseekVLImageProcessor.from_pretrained(tmp_path)
    assert (again.image_size, again.image_mean, again.image_std) == (32, None, None)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        DeepseekVLImageProcessor.from_pretrained(tmp_path / "missing")


def test_deepseek_chat_prompt_format():
    text = deepseek_vl_chat_prompt("<image_placeholder>What is this?")
    assert text == (
        DEEPSEEK_VL_SYSTEM_PROMPT + "\n\nUser: <image_placeholder>What is this?\n\nAssistant:"
    )
    assert DEEPSEEK_VL_SYSTEM_PROMPT.startswith("You are a helpful language and vision assistant.")
    assert deepseek_vl_chat_prompt("hi", system_prompt="") == "User: hi\n\nAssistant:"


def test_expand_image_tokens():
    ids = expand_image_tokens([1, 9, 5, 9], image_token_id=9, num_image_tokens=3)
    assert ids.tolist() == [1, 9, 9, 9, 5, 9, 9, 9]


def test_encode_deepseek_vl_prompt(deepseek_tokenizer):
    tok = deepseek_tokenizer
    text = deepseek_vl_chat_prompt(DEEPSEEK_VL_IMAGE_TAG + "Where is the red circle?")
    ids = encode_deepseek_vl_prompt(tok, text, num_image_tokens=16)
    image_id = tok.convert_tokens_to_ids(DEEPSEEK_VL_IMAGE_TAG)
    assert ids[0].item() == tok.bos_token_id
    assert int((ids == image_id).sum()) == 16
    where = (ids == image_id).nonzero().flatten()
    assert (where.diff() == 1).all(), "the expanded image tokens must be contiguous"
    plain = tok(text).input_ids
    assert len(ids) == len(plain) + 15
