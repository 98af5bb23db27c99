"""Our MGM has the state-dict names and shapes of F-LMM's vendored MGM (the official layout),
built at the released sizes on the meta device (tests/fixtures/mgm/record_flmm_keys.py)."""

from __future__ import annotations

import json
import lzma
import os

import pytest

from hg_lmm.testing.real_shapes import meta_mgm

RELEASES = {
    "mgm-2b": "frozen_mgm_gemma_2b_unet_sam_l_refcoco_png",
    "mgm-7b": "frozen_mgm_vicuna_7b_unet_sam_l_refcoco_png",
    "mgm-7b-hd": "frozen_mgm_vicuna_7b_hd_unet_sam_l_refcoco_png",
}


@pytest.fixture(scope="module")
def flmm_keys(fixtures_dir):
    with lzma.open(os.path.join(fixtures_dir, "mgm", "flmm_mgm_keys.json.xz"), "rt") as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_state_dict_equals_flmm_vendored_mgm(flmm_keys, name):
    model = meta_mgm(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = flmm_keys[RELEASES[name]]["mgm_state_dict_shapes"]
    assert sorted(set(ours) - set(theirs)) == [] and sorted(set(theirs) - set(ours)) == []
    assert ours == theirs
    # The parts the issue names, by their released names.
    assert theirs["model.vision_tower_aux.vision_stages.3.blocks.2.mlp.fc2.weight"] == [1536, 6144]
    assert theirs["model.vlm_uni_aux_projector.1.weight"] == [1024, 2880]
