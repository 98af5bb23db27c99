"""F-LMM's three released MGM heads load strictly: the key list of F-LMM's own model, built at
the real dims on the meta device (tests/fixtures/mgm/record_flmm_keys.py), equals the trainable
state of our configs' head built from our MGM adapter's real dims."""

from __future__ import annotations

import json
import lzma
import os

import pytest
import torch

from hg_lmm.heads.unet_sam import SAMRefiner, UNetSAMHead, build_sam
from hg_lmm.lmm.mgm import MGMAdapter, MGMImageProcessor
from hg_lmm.testing.golden import golden_state_dict
from hg_lmm.testing.real_shapes import meta_mgm
from hg_lmm.utils.checkpoint import load_state, trainable_state_names

RELEASES = {
    "mgm-2b": ("frozen_mgm_gemma_2b_unet_sam_l_refcoco_png", "gemma", 18 * 8),
    "mgm-7b": ("frozen_mgm_vicuna_7b_unet_sam_l_refcoco_png", "vicuna", 32 * 32),
    "mgm-7b-hd": ("frozen_mgm_vicuna_7b_hd_unet_sam_l_refcoco_png", "vicuna", 2 * 32 * 32),
}


@pytest.fixture(scope="module")
def keys(fixtures_dir):
    with lzma.open(os.path.join(fixtures_dir, "mgm", "flmm_mgm_keys.json.xz"), "rt") as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_released_key_list_loads_strictly(keys, name, tmp_path):
    from hg_lmm.testing.tiny_models import tiny_tokenizer

    release, template, channels = RELEASES[name]
    lmm = meta_mgm(name)
    adapter = MGMAdapter(
        lmm=lmm,
        tokenizer=tiny_tokenizer(f"mgm_{template}", tmp_path),
        processor=MGMImageProcessor(image_size=lmm.config.image_size_aux),
        template=template,
    )
    with torch.device("meta"):
        # The released config's head, SAM ViT-L without weights.
        head = UNetSAMHead(
            dims=adapter.dims,
            sam=dict(type=SAMRefiner, model=dict(type=build_sam, variant="vit_l")),
        )
    assert adapter.dims.attn_channels == channels
    shapes = keys[release]["head_state_dict_shapes"]
    own = {k: list(head.state_dict()[k].shape) for k in trainable_state_names(head)}
    assert own == shapes
    assert shapes["mask_head.encoder.0.0.convs.0.conv.weight"][1] == channels
    report = load_state(head, golden_state_dict(shapes), head_prefix="", assign=True)
    assert report.missing == [] and report.unexpected == []
