"""The U-Net+SAM head reproduces F-LMM's released pipeline: grid crop, SAM prompts, final masks.

F-LMM crops the U-Net's 64x64 logits to the image *at mask resolution* (start rounded down, length
rounded half up) and builds SAM's mask prompt and box from that map. The checks below recompute
that rule independently (integer arithmetic, not our helper), rebuild SAM's inputs and masks from
it with segment_anything's own modules, and compare with what the head feeds SAM and returns, for
landscape, portrait, square and odd images under the three LMMs' processors. A golden file
recorded with F-LMM's own code pins the whole tiny pipeline end to end.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hg_lmm.heads.unet_sam import SAMRefiner, UNetMaskHead, UNetSAMHead
from hg_lmm.lmm.base import LMMDims, LMMFeatures
from hg_lmm.lmm.deepseek_vl.processing import DeepseekVLImageProcessor
from hg_lmm.lmm.llava.processing import LlavaImageProcessor
from hg_lmm.testing.tiny_sam import tiny_sam
from hg_lmm.utils.masks import crop_to_image_grid, grid_image_region

PROCESSORS = {
    "llava_336": LlavaImageProcessor(image_size=336),
    "deepseek_vl_384": DeepseekVLImageProcessor(image_size=384),
    "deepseek_vl_1024": DeepseekVLImageProcessor(image_size=1024, image_mean=None, image_std=None),
}
# (processor, (width, height)) -> (top, left, h, w) of the image on the 64x64 map, derived by hand:
# e.g. LLaVA, 500x333: resized 223x336, 56 rows above; 56*64/336 = 10.67 -> 10, 223*64/336 = 42.48
# -> 42. DeepSeek-VL-384: 255x384, 64 above; 64*64/384 = 10.67 -> 10, 255*64/384 = 42.5 -> 43 (half
# up, where Python's round() would give 42). An exact crop of the resized padded square would
# keep 223/336 or 255/384 of the rows instead.
HAND_CROPS = {
    ("llava_336", (500, 333)): (10, 0, 42, 64),
    ("llava_336", (333, 500)): (0, 10, 64, 42),
    ("llava_336", (640, 640)): (0, 0, 64, 64),
    ("llava_336", (101, 37)): (20, 0, 23, 64),  # 123x336, 106 above: 20.19 -> 20, 23.43 -> 23
    ("llava_336", (37, 1001)): (0, 30, 64, 2),  # 336x12, 162 left: 30.86 -> 30, 2.29 -> 2
    ("deepseek_vl_384", (500, 333)): (10, 0, 43, 64),
    ("deepseek_vl_384", (333, 500)): (0, 10, 64, 43),
    ("deepseek_vl_384", (37, 1001)): (0, 30, 64, 2),  # 384x14 (min size), 185 left
    ("deepseek_vl_1024", (500, 333)): (10, 0, 43, 64),  # 681x1024, 171 above: 42.56 + .5 -> 43
    ("deepseek_vl_1024", (1001, 999)): (0, 0, 64, 64),  # 1021x1024, 1 row above: 0.06 -> 0
}


def _meta(processor: str, size: tuple[int, int]) -> dict:
    return PROCESSORS[processor](Image.new("RGB", size))[1]


def flmm_crop_region(meta: dict, map_h: int, map_w: int) -> tuple[int, int, int, int]:
    """F-LMM's rule in exact integer arithmetic: floor(b * m / P), floor(s * m / P + 1/2)."""
    ph, pw = meta["padded_shape"]["height"], meta["padded_shape"]["width"]
    top = meta["padding"]["before_height"] * map_h // ph
    left = meta["padding"]["before_width"] * map_w // pw
    h = (2 * meta["image_shape"]["height"] * map_h + ph) // (2 * ph)
    w = (2 * meta["image_shape"]["width"] * map_w + pw) // (2 * pw)
    return top, left, h, w


@pytest.mark.parametrize("case", sorted(HAND_CROPS), ids=lambda c: f"{c[0]}-{c[1][0]}x{c[1][1]}")
def test_grid_crop_matches_hand_derived_values(case):
    meta = _meta(*case)
    assert flmm_crop_region(meta, 64, 64) == HAND_CROPS[case]
    assert grid_image_region(meta, (64, 64)) == HAND_CROPS[case]
    logits = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 64, 64)
    top, left, h, w = HAND_CROPS[case]
    assert torch.equal(crop_to_image_grid(logits, meta), logits[:, top : top + h, left : left + w])


def test_grid_crop_agrees_with_the_integer_rule_on_many_shapes():
    """Letterbox geometries with short sides 1, 8, 15, ... on 336 and 384 squares, 64/48 maps."""
    from hg_lmm.lmm.processors import letterbox_meta

    checked = 0
    for side in (336, 384):
        for short in range(1, side + 1, 7):
            for meta in (letterbox_meta(short, side, side), letterbox_meta(side, short, side)):
                for m in (64, 48):
                    expected = flmm_crop_region(meta, m, m)
                    if min(expected[2:]) == 0:  # thinner than one map cell: kept at 1 (see docs)
                        expected = (*expected[:2], max(1, expected[2]), max(1, expected[3]))
                    assert grid_image_region(meta, (m, m)) == expected, (meta, m)
                    checked += 1
    assert checked > 400


def test_grid_crop_rejects_an_inconsistent_meta():
    from hg_lmm.lmm.processors import letterbox_meta

    meta = letterbox_meta(40, 48, 48)
    meta["padding"]["before_height"] = 20  # 20 + 40 rows do not fit in 48
    with pytest.raises(ValueError, match="does not fit"):
        crop_to_image_grid(torch.zeros(1, 64, 64), meta)
    with pytest.raises(ValueError, match="lacks padded_shape.height"):
        grid_image_region({"padding": meta["padding"]}, (64, 64))


# ---------------------------------------------------------------------------------------------
# The head's SAM inputs and final logits on a fixed tiny SAM.

DIMS = LMMDims(
    num_layers=2, num_heads=2, hidden_size=16, grid=6, vision_channels=16, vision_layers=(),
    image_size=24,
)  # fmt: skip


def _designed_logits(meta: dict) -> torch.Tensor:
    """[3, 1, 64, 64] U-Net logits with known content, placed relative to the F-LMM crop.

    0: +10 on crop rows 5..19 and columns 16..31 (landscape) or the transposed box (portrait),
       -10 elsewhere (a sharp box whose edges can be derived by hand);
    1: a smooth negative ramp (empty mask: SAM gets the whole-image box);
    2: +8 over the padding above/left of the image and on the crop's first 3 rows/columns, a
       ramp elsewhere: what lies outside the crop must not reach SAM.
    """
    top, left, h, w = flmm_crop_region(meta, 64, 64)
    y = torch.arange(64, dtype=torch.float32)[:, None].expand(64, 64)
    x = torch.arange(64, dtype=torch.float32)[None, :].expand(64, 64)
    sharp = torch.full((64, 64), -10.0)
    if w >= h:
        sharp[top + 5 : top + 20, left + 16 : left + 32] = 10.0
    else:
        sharp[top + 16 : top + 32, left + 5 : left + 20] = 10.0
    ramp = -3.0 - 0.05 * x - 0.02 * y
    edge = 0.1 * (x - y)
    edge[: top + 3] = 8.0
    edge[:, : left + 3] = 8.0
    return torch.stack([sharp, ramp, edge])[:, None]


def _features(meta: dict) -> LMMFeatures:
    gen = torch.Generator().manual_seed(0)
    mask_ids = torch.tensor([-1, 0, 0, 1, 2, 2, 2])
    t, g = len(mask_ids), DIMS.grid
    attn = torch.rand(DIMS.num_layers, DIMS.num_heads, t, g, g, generator=gen)
    return LMMFeatures(
        attn=attn / attn.sum((-2, -1), keepdim=True),
        hidden=torch.randn(DIMS.num_layers, t, DIMS.hidden_size, generator=gen),
        vision=torch.zeros(0),
        pixel_values=torch.zeros(3, DIMS.image_size, DIMS.image_size),
        mask_ids=mask_ids,
        meta=meta,
    )


@pytest.fixture(scope="module")
def head() -> UNetSAMHead:
    head = UNetSAMHead(
        dims=DIMS,
        sam=dict(type=SAMRefiner, model=tiny_sam()),  # 64 frame, 16x16 mask prompts
        mask_head=dict(type=UNetMaskHead, base_channels=8),
    )
    return head.eval()


def reference_sam(sam, image: np.ndarray, coarse: torch.Tensor, text: list[torch.Tensor]):
    """F-LMM's SAM step, rebuilt from its behaviour on segment_anything's modules.

    Per phrase: the mask prompt is the coarse map resized (bilinear) to the image's size in SAM's
    frame, padded bottom/right with min(-1, min over all coarse logits), resized to the prompt
    encoder's mask size; the box is the tight box (x0, y0, x1 + 1, y1 + 1) of
    sigmoid(coarse) resized to the original size > 0.5 (the whole image if empty), scaled into the
    frame in float64. Returns (mask prompts [n, 1, m, m], boxes [n, 4], logits [n, H, W]).
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    frame = sam.image_encoder.img_size
    resize = ResizeLongestSide(frame)
    pixels = torch.from_numpy(resize.apply_image(image)).permute(2, 0, 1)[None].float()
    input_size = tuple(pixels.shape[-2:])
    H, W = image.shape[:2]
    with torch.no_grad():
        embedding = sam.image_encoder(sam.preprocess(pixels))
        pad = min(-1.0, coarse.min().item())
        prompt = F.interpolate(coarse[:, None], size=input_size, mode="bilinear")
        prompt = F.pad(prompt, (0, frame - input_size[1], 0, frame - input_size[0]), value=pad)
        prompt = F.interpolate(prompt, size=sam.prompt_encoder.mask_input_size, mode="bilinear")
        probs = F.interpolate(coarse[None].sigmoid(), size=(H, W), mode="bilinear")[0]
        boxes, out = [], []
        for k in range(coarse.shape[0]):
            ys, xs = np.nonzero(probs[k].numpy() > 0.5)
            box = (
                np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
                if len(ys)
                else np.array([0.0, 0.0, W, H])
            )
            box[[0, 2]] *= input_size[1] / W
            box[[1, 3]] *= input_size[0] / H
            boxes.append(torch.tensor(box, dtype=torch.float32))
            sparse, dense = sam.prompt_encoder(
                points=None, boxes=boxes[-1][None], masks=prompt[k : k + 1]
            )
            low, _ = sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=torch.cat([sparse, text[k][None]], dim=1),
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            out.append(sam.postprocess_masks(low, input_size, (H, W))[0, 0])
    return prompt, torch.stack(boxes), torch.stack(out)


SAM_CASES = [
    ("llava_336", (500, 333)),
    ("llava_336", (333, 500)),
    ("llava_336", (640, 640)),
    ("deepseek_vl_384", (500, 333)),
    ("deepseek_vl_384", (101, 37)),
    ("deepseek_vl_1024", (37, 101)),
    ("deepseek_vl_1024", (211, 173)),
]


@pytest.mark.parametrize("case", SAM_CASES, ids=lambda c: f"{c[0]}-{c[1][0]}x{c[1][1]}")
def test_sam_inputs_and_final_logits_follow_flmm(head, monkeypatch, case):
    processor, (width, height) = case
    meta = _meta(processor, (width, height))
    features = _features(meta)
    designed = _designed_logits(meta)
    monkeypatch.setattr(head, "mask_logits", lambda f: designed)
    image = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), np.uint8)
    seen: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):
        seen.update(boxes=kwargs["boxes"].clone(), masks=kwargs["masks"].clone())

    hook = head.sam.model.prompt_encoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = head(features, image)
    finally:
        hook.remove()

    top, left, h, w = flmm_crop_region(meta, 64, 64)
    coarse = designed[:, 0, top : top + h, left : left + w]
    assert torch.equal(out["coarse_logits"], coarse)
    text = head.phrase_token_embeddings(features.hidden, features.mask_ids)
    prompt, boxes, logits = reference_sam(head.sam.model, image, coarse, text)
    torch.testing.assert_close(seen["masks"], prompt, atol=1e-6, rtol=0)
    torch.testing.assert_close(seen["boxes"], boxes, atol=1e-5, rtol=0)
    assert out["logits"].shape == (3, height, width)
    torch.testing.assert_close(out["logits"], logits, atol=1e-4, rtol=0)
    # Phrase 1 is empty: the whole image, in SAM's frame.
    scale = 64 / max(width, height)  # segment_anything's resize: long side 64, rounded half up
    frame_w, frame_h = int(width * scale + 0.5), int(height * scale + 0.5)
    torch.testing.assert_close(seen["boxes"][1], torch.tensor([0.0, 0.0, frame_w, frame_h]))


def test_box_of_a_sharp_coarse_mask_by_hand(head, monkeypatch):
    """LLaVA, a 500x333 image: the crop is rows 10..51 of the 64-map (42 rows, 64 columns); the
    designed +10 block covers crop rows 5..19 and columns 16..31. Upsampled to 333x500 (bilinear,
    half-pixel centres: pixel x reads source (x + .5) * 64/500 - .5), sigmoid > 0.5 holds while
    the source is within half a cell of the block: 15.5 < src_x < 31.5 <=> 124.5 < x < 249.5 ->
    columns 125..249; 4.5 < src_y < 19.5 <=> 39.1 < y < 158.1 -> rows 40..158. So the box is
    (125, 40, 250, 159) in pixels, scaled into SAM's frame (64 wide, 43 high)."""
    meta = _meta("llava_336", (500, 333))
    designed = _designed_logits(meta)
    monkeypatch.setattr(head, "mask_logits", lambda f: designed)
    image = np.zeros((333, 500, 3), np.uint8)
    seen = {}
    hook = head.sam.model.prompt_encoder.register_forward_pre_hook(
        lambda m, a, kw: seen.update(boxes=kw["boxes"].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            head(_features(meta), image)
    finally:
        hook.remove()
    expected = torch.tensor([125 * 64 / 500, 40 * 43 / 333, 250 * 64 / 500, 159 * 43 / 333])
    torch.testing.assert_close(seen["boxes"][0], expected)


# ---------------------------------------------------------------------------------------------
# End to end: tiny LLaVA + U-Net + tiny SAM against outputs recorded with F-LMM's own code.


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    folder = os.path.join(fixtures_dir, "unet_sam")
    with open(os.path.join(folder, "tiny_llava_unet_sam.json")) as f:
        record = json.load(f)
    expected = torch.load(os.path.join(folder, "tiny_llava_unet_sam_expected.pt"))
    return record, expected


@pytest.fixture(scope="module")
def golden_model(golden, tmp_path_factory):
    from hg_lmm.lmm.llava import LlavaAdapter
    from hg_lmm.model import GroundingModel
    from hg_lmm.testing.unet_sam_pipeline import golden_tiny_llava, golden_unet_sam_head

    record, _ = golden
    lmm, tok, _ = golden_tiny_llava(tmp_path_factory.mktemp("golden_llava"), record["lmm"])
    adapter = LlavaAdapter(
        lmm=lmm,
        tokenizer=tok,
        processor=LlavaImageProcessor(image_size=record["lmm"]["config"]["image_size"]),
        vision_layers=tuple(record["lmm"]["vision_layers"]),
    )
    assert adapter.image_token_id == record["image_token_id"]
    return GroundingModel(lmm=adapter, head=golden_unet_sam_head(adapter.dims, record["head"]))


@pytest.mark.parametrize("index", [0, 1], ids=["landscape", "portrait"])
def test_end_to_end_matches_flmm_recording(golden, golden_model, index):
    from hg_lmm.testing.unet_sam_pipeline import fixture_tokens, golden_image

    record, expected = golden
    case = record["cases"][index]
    input_ids, mask_ids = fixture_tokens(record["tokens"])
    image = Image.fromarray(golden_image(case["height"], case["width"], case["seed"]))
    sample = {"input_ids": input_ids, "mask_ids": mask_ids, "image": image}
    model = golden_model.eval()
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
    assert features.meta == case["meta"]
    assert list(out["coarse_logits"].shape) == case["coarse_shape"]
    name = case["name"]
    coarse = expected[f"{name}/coarse_logits"]
    torch.testing.assert_close(out["coarse_logits"], coarse, atol=1e-4, rtol=0)
    torch.testing.assert_close(seen[0], torch.tensor(case["box_prompts"]), atol=1e-3, rtol=0)
    assert list(final.shape) == case["final_shape"]
    torch.testing.assert_close(final, expected[f"{name}/final_logits"], atol=1e-4, rtol=0)
    assert final.double().sum().item() == pytest.approx(case["final_sum"], rel=1e-3)
