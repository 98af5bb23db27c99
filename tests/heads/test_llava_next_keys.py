"""F-LMM's two released LLaVA-NeXT heads load strictly: the key list of F-LMM's own model, built
at the real dims on the meta device (tests/fixtures/llava_next/record_flmm_keys.py), equals the
trainable state of our configs' head built from the real LLaVA-NeXT-7B dims."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hg_lmm.heads.unet_sam import SAMRefiner, UNetSAMHead, build_sam
from hg_lmm.lmm.llava_next import LlavaNextAdapter, LlavaNextImageProcessor
from hg_lmm.testing.golden import golden_state_dict
from hg_lmm.testing.tiny_llava_next import llava_next_7b_config
from hg_lmm.utils.checkpoint import load_state, trainable_state_names

NAMES = {
    "vicuna": "frozen_llava_next_vicuna_7b_unet_sam_l_refcoco_png",
    "mistral": "frozen_llava_next_mistral_7b_unet_sam_l_refcoco_png",
}


@pytest.fixture(scope="module")
def keys(fixtures_dir):
    with open(os.path.join(fixtures_dir, "llava_next", "flmm_llava_next_keys.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("decoder", sorted(NAMES))
def test_released_key_list_loads_strictly(keys, decoder, llava_tokenizer):
    from transformers import LlavaNextForConditionalGeneration

    with torch.device("meta"):
        lmm = LlavaNextForConditionalGeneration(llava_next_7b_config(llava_tokenizer, decoder))
        adapter = LlavaNextAdapter(
            lmm=lmm,
            tokenizer=llava_tokenizer,
            processor=LlavaNextImageProcessor(),
            template=decoder,
        )
        # The released config's head, SAM ViT-L without weights.
        head = UNetSAMHead(
            dims=adapter.dims,
            sam=dict(type=SAMRefiner, model=dict(type=build_sam, variant="vit_l")),
        )
    assert adapter.dims.attn_channels == 2 * 32 * 32
    shapes = keys[NAMES[decoder]]["state_dict_shapes"]
    own = {k: list(head.state_dict()[k].shape) for k in trainable_state_names(head)}
    assert own == shapes
    assert shapes["mask_head.encoder.0.0.convs.0.conv.weight"][1] == 2048
    report = load_state(head, golden_state_dict(shapes), head_prefix="", assign=True)
    assert report.missing == [] and report.unexpected == []
