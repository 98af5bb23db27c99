"""End to end: tiny MGM (Gemma, Vicuna, Vicuna-HD) + U-Net + tiny SAM against outputs recorded
with F-LMM's own `RefCOCO2PNG` and `FrozenMGMSAM._forward` (tests/fixtures/mgm/README.md)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

NAME = "tiny_mgm_unet_sam"
IMAGE_TOKEN_INDEX = -200  # F-LMM's (LLaVA's) id for the image slot


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    folder = os.path.join(fixtures_dir, "mgm")
    with open(os.path.join(folder, f"{NAME}.json")) as f:
        record = json.load(f)
    return record, torch.load(os.path.join(folder, f"{NAME}_expected.pt"))


@pytest.fixture(scope="module", params=["gemma", "vicuna", "vicuna_hd"])
def golden_model(request, golden, tmp_path_factory):
    from hg_lmm.datasets.sample import Piece
    from hg_lmm.datasets.transforms import encode_pieces
    from hg_lmm.lmm.mgm import MGMAdapter, MGMImageProcessor
    from hg_lmm.model import GroundingModel
    from hg_lmm.testing.tiny_mgm import VARIANTS, golden_tiny_mgm
    from hg_lmm.testing.unet_sam_pipeline import golden_unet_sam_head

    record, _ = golden
    variant = request.param
    folder = tmp_path_factory.mktemp(f"golden_mgm_{variant}")
    lmm, tok, _ = golden_tiny_mgm(folder, {"variant": variant})
    adapter = MGMAdapter(
        lmm=lmm,
        tokenizer=tok,
        processor=MGMImageProcessor(image_size=lmm.config.image_size_aux),
        template=VARIANTS[variant][0],
    )
    # Our tokens (prompt, then each expression and a period) are F-LMM's, with its -200 slot.
    pieces = [Piece(p, k, period_after=True) for k, p in enumerate(record["phrases"])]
    ids, mids, _ = encode_pieces(tok, adapter.train_prompt, pieces)
    flmm_ids = ids.masked_fill(ids == adapter.image_token_id, IMAGE_TOKEN_INDEX)
    assert flmm_ids.tolist() == record["tokens"][variant]["input_ids"]
    assert mids.tolist() == record["tokens"][variant]["mask_ids"]
    head = golden_unet_sam_head(adapter.dims, record["head"])
    return variant, ids, mids, GroundingModel(lmm=adapter, head=head).eval()


@pytest.mark.parametrize("index", range(3), ids=["landscape", "portrait", "square"])
def test_end_to_end_matches_flmm_recording(golden, golden_model, index):
    from hg_lmm.testing.unet_sam_pipeline import golden_image

    record, expected = golden
    variant, input_ids, mask_ids, model = golden_model
    case = record["cases"][index]
    result = record["results"][f"{variant}/{case['name']}"]
    image = Image.fromarray(golden_image(case["height"], case["width"], case["seed"]))
    sample = {"input_ids": input_ids, "mask_ids": mask_ids, "image": image}
    seen = []
    hook = model.head.sam.model.prompt_encoder.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["boxes"].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            features = model.lmm.extract(sample)
            out = model.head(features, image)
            final = model([sample], mode="tensor")[0]
    finally:
        hook.remove()
    assert features.meta == result["meta"]  # our processor's record is F-LMM's Pad2Square's
    maps = 2 if variant == "vicuna_hd" else 1
    assert features.attn.shape[0] == maps * model.lmm.dims.num_layers
    assert list(out["coarse_logits"].shape) == result["coarse_shape"]
    key = f"{variant}/{case['name']}"
    torch.testing.assert_close(
        out["coarse_logits"], expected[f"{key}/coarse_logits"], atol=1e-4, rtol=0
    )
    boxes = seen[0].reshape(-1, 4)
    torch.testing.assert_close(boxes, torch.tensor(result["box_prompts"]), atol=1e-3, rtol=0)
    assert list(final.shape) == result["final_shape"]
    torch.testing.assert_close(final, expected[f"{key}/final_logits"], atol=1e-4, rtol=0)
    assert final.double().sum().item() == pytest.approx(result["final_sum"], rel=1e-3)
