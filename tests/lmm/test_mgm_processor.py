"""MGM's processor and prompts reproduce F-LMM's (tests/fixtures/mgm/record_flmm_processor.py:
its Pad2Square and CLIP image processor at image_size_aux), bit for bit."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from hg_lmm.lmm.mgm import MGMImageProcessor, mgm_train_prompt
from hg_lmm.testing.unet_sam_pipeline import golden_image

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "mgm")
with open(os.path.join(HERE, "processor.json")) as _f:
    RECORD = json.load(_f)


@pytest.mark.parametrize("name", sorted(RECORD["cases"]))
def test_processor_matches_flmm_bit_for_bit(name):
    case = RECORD["cases"][name]
    image = Image.fromarray(golden_image(case["height"], case["width"], case["seed"]))
    pixels, meta = MGMImageProcessor(image_size=case["image_size_aux"])(image)
    assert meta == case["meta"]
    assert list(pixels.shape) == case["shape"]
    values = np.ascontiguousarray(pixels.numpy(), dtype=np.float32)
    assert float(values.astype(np.float64).sum()) == case["sum"]
    assert hashlib.sha256(values.tobytes()).hexdigest() == case["sha256"]


def test_train_prompts_are_xtuners_templates():
    # xtuner's PROMPT_TEMPLATE.gemma / .vicuna INSTRUCTION around F-LMM's prompt.
    question = "<image>\nPlease give me a description of the image."
    assert mgm_train_prompt("gemma") == (
        f"<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"
    )
    assert mgm_train_prompt("vicuna") == f"USER: {question} ASSISTANT:"
    with pytest.raises(ValueError, match="unknown template"):
        mgm_train_prompt("mistral")
