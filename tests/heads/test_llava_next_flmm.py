"""End to end: tiny LLaVA-NeXT (Vicuna and Mistral) + U-Net + tiny SAM against outputs recorded
with F-LMM's own `FrozenLlavaNextSAM._forward` (tests/fixtures/llava_next/README.md)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

NAME = "tiny_llava_next_unet_sam"


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    folder = os.path.join(fixtures_dir, "llava_next")
    with open(os.path.join(folder, f"{NAME}.json")) as f:
        record = json.load(f)
    return record, torch.load(os.path.join(folder, f"{NAME}_expected.pt"))


@pytest.fixture(scope="module", params=["vicuna", "mistral"])
def golden_model(request, golden, tmp_path_factory):
    from hg_lmm.lmm.llava_next import LlavaNextAdapter, load_processor
    from hg_lmm.model import GroundingModel
    from hg_lmm.testing.tiny_llava_next import golden_tiny_llava_next
    from hg_lmm.testing.unet_sam_pipeline import golden_unet_sam_head

    record, _ = golden
    decoder = request.param
    recipe = dict(record["lmm"], decoder=decoder)
    lmm, tok, path = golden_tiny_llava_next(tmp_path_factory.mktemp(f"golden_{decoder}"), recipe)
    adapter = LlavaNextAdapter(
        lmm=lmm,
        tokenizer=tok,
        processor=load_processor(path, lmm.config),
        template=decoder,
        vision_layers=tuple(record["lmm"]["vision_layers"]),
    )
    # The prompt tokens are F-LMM's (xtuner's template, BOS, one <image>).
    ids = tok(adapter.train_prompt).input_ids
    assert record["tokens"][decoder]["input_ids"][: len(ids)] == ids
    head = golden_unet_sam_head(adapter.dims, record["head"])
    return decoder, GroundingModel(lmm=adapter, head=head).eval()


@pytest.mark.parametrize("index", range(5), ids=["landscape", "portrait", "square", "wide", "tall"])
def test_end_to_end_matches_flmm_recording(golden, golden_model, index):
    from hg_lmm.testing.unet_sam_pipeline import fixture_tokens, golden_image

    record, expected = golden
    decoder, model = golden_model
    case = record["cases"][index]
    result = record["results"][f"{decoder}/{case['name']}"]
    input_ids, mask_ids = fixture_tokens(record["tokens"][decoder])
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
    assert features.meta["anyres"] == result["meta"]  # our processor's record is F-LMM's
    assert features.attn.shape[0] == 2 * model.lmm.dims.num_layers
    assert list(out["coarse_logits"].shape) == result["coarse_shape"]
    key = f"{decoder}/{case['name']}"
    torch.testing.assert_close(
        out["coarse_logits"], expected[f"{key}/coarse_logits"], atol=1e-4, rtol=0
    )
    boxes = seen[0].reshape(-1, 4)  # one prompt-encoder call for all phrases (head only)
    torch.testing.assert_close(boxes, torch.tensor(result["box_prompts"]), atol=1e-3, rtol=0)
    assert list(final.shape) == result["final_shape"]
    torch.testing.assert_close(final, expected[f"{key}/final_logits"], atol=1e-4, rtol=0)
    assert final.double().sum().item() == pytest.approx(result["final_sum"], rel=1e-3)
