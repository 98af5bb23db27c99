"""The U-Net+SAM head: the U-Net mask head against the golden fixtures, the checkpoint key set,
and the SAM refiner on a tiny SAM (CPU, seconds)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hg_lmm.heads.unet_sam import (
    SAMImage,
    SAMRefiner,
    UNetMaskHead,
    UNetSAMHead,
    build_sam,
    mask_boxes,
    prepare_sam_image,
)
from hg_lmm.lmm.base import LMMDims, LMMFeatures
from hg_lmm.testing.golden import golden_state_dict, hash_uniform
from hg_lmm.testing.tiny_sam import tiny_sam
from hg_lmm.utils.checkpoint import (
    CheckpointError,
    load_state,
    trainable_state_dict,
    trainable_state_names,
)

VARIANTS = ["deepseek_vl_1_3b", "deepseek_vl_7b", "llava_1_5_7b"]
PREFIX = "mask_head."


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    with open(os.path.join(fixtures_dir, "flmm_unet", "flmm_unet_sam.json")) as f:
        return json.load(f)


def _dims_from_fixture(record: dict) -> LMMDims:
    """LMMDims read off the released key shapes (the vision fields do not matter to this head)."""
    shapes = record["state_dict_shapes"]
    num_layers = shapes["text_layer_weights"][0]
    hidden = shapes["text_proj.weight"][1]
    attn_channels = shapes["mask_head.encoder.0.0.convs.0.conv.weight"][1]
    grid = record["unet_input"]["shape"][-1]
    return LMMDims(
        num_layers=num_layers,
        num_heads=attn_channels // num_layers,
        hidden_size=hidden,
        grid=grid,
        vision_channels=hidden,
        vision_layers=(),
        image_size=16 * grid,
    )


# ---------------------------------------------------------------------------------------------
# Golden: the U-Net head reproduces the reference's logits for L*H = 384, 960 and 1024.


@pytest.mark.parametrize("variant", VARIANTS)
def test_unet_golden(fixture, fixtures_dir, variant):
    record = fixture[variant]
    # The hash seed is the released key name, prefix included; the module itself has no prefix.
    shapes = {k: s for k, s in record["state_dict_shapes"].items() if k.startswith(PREFIX)}
    weights = {k[len(PREFIX) :]: v for k, v in golden_state_dict(shapes).items()}
    in_shape = record["unet_input"]["shape"]
    head = UNetMaskHead(in_channels=in_shape[1]).eval()
    head.load_state_dict(weights, strict=True)

    x = hash_uniform(in_shape, record["unet_input"]["seed"]).abs()
    with torch.no_grad():
        out = head(x)

    expected = torch.load(
        os.path.join(fixtures_dir, "flmm_unet", f"flmm_unet_{variant}_expected.pt")
    )["expected_unet_logits"]
    assert list(out.shape) == record["unet_output_shape"] == list(expected.shape)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert out.double().sum().item() == pytest.approx(record["unet_output_sum"], rel=1e-3)
    assert out.double().abs().sum().item() == pytest.approx(record["unet_output_abs_sum"], rel=1e-3)


def test_unet_pads_to_the_downsampling_rate():
    """A grid whose upsampled side is not a multiple of 8 is padded, run and cropped back."""
    head = UNetMaskHead(in_channels=4, base_channels=8, upsample_input_to=None).eval()
    x = torch.rand(2, 4, 13, 10)
    with torch.no_grad():
        out = head(x)
    assert out.shape == (2, 1, 13, 10)
    # Sum-normalisation makes the head blind to the scale of each attention map.
    torch.testing.assert_close(head(x * 7.0), out, atol=1e-5, rtol=0)


def test_unet_rejects_wrong_channels():
    head = UNetMaskHead(in_channels=4, base_channels=8)
    with pytest.raises(ValueError, match="L\\*H channels"):
        head(torch.rand(1, 5, 6, 6))


# ---------------------------------------------------------------------------------------------
# Checkpoint key set: a state dict shaped like the released F-LMM checkpoints loads exactly.


@pytest.mark.parametrize("variant", VARIANTS)
def test_release_key_set_loads(fixture, variant):
    record = fixture[variant]
    shapes = record["state_dict_shapes"]
    dims = _dims_from_fixture(record)
    # vit_l on the meta device: full-size names and shapes, no memory, no init cost.
    with torch.device("meta"):
        head = UNetSAMHead(
            dims=dims, sam=dict(type=SAMRefiner, model=dict(type=build_sam, variant="vit_l"))
        )

    own = {k: list(head.state_dict()[k].shape) for k in trainable_state_names(head)}
    assert own == shapes
    assert any(k.startswith("sam.model.image_encoder.") for k in head.state_dict())

    report = load_state(head, golden_state_dict(shapes), head_prefix="", assign=True)
    assert report.missing == [] and report.unexpected == []
    assert head.text_proj.weight.device.type == "cpu"


def test_release_file_with_sam_image_encoder_loads(caplog):
    """F-LMM files saved from the parent model's `state_dict()` also hold SAM's frozen image
    encoder: strict loading ignores those tensors (logging how many) and keeps the encoder that
    came from the official SAM weights."""
    import logging

    dims = LMMDims(2, 2, 16, 6, 16, (), 24)
    head = UNetSAMHead(
        dims=dims,
        sam=SAMRefiner(model=tiny_sam()),
        mask_head=UNetMaskHead(in_channels=4, base_channels=8),
    )
    encoder_before = {k: v.clone() for k, v in head.sam.model.image_encoder.state_dict().items()}
    released = {k: torch.full_like(v, 0.5) for k, v in head.state_dict().items()}
    n_encoder = sum(k.startswith("sam.model.image_encoder.") for k in released)
    assert n_encoder == len(encoder_before) > 0
    # As a released file names them (no prefix) and as our model names them (`head.` prefix).
    for prefix in ("", "head."):
        container = torch.nn.Module()
        container.head = head
        state = {prefix + k: v for k, v in released.items()}
        with caplog.at_level(logging.INFO, logger="hg_lmm.utils.checkpoint"):
            caplog.clear()
            report = load_state(container, state, strict=True)
        assert report.missing == [] and report.unexpected == []
        assert len(report.ignored) == n_encoder
        assert f"ignored {n_encoder} checkpoint tensors" in caplog.text
        assert torch.equal(head.text_proj.weight, torch.full_like(head.text_proj.weight, 0.5))
        for k, v in head.sam.model.image_encoder.state_dict().items():
            assert torch.equal(v, encoder_before[k]), k


def test_checkpoint_load_names_bad_keys():
    dims = LMMDims(2, 2, 16, 6, 16, (), 24)
    head = UNetSAMHead(
        dims=dims,
        sam=SAMRefiner(model=tiny_sam()),
        mask_head=UNetMaskHead(in_channels=4, base_channels=8),
    )
    state = trainable_state_dict(head)
    assert "sam.model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in state
    assert not any(k.startswith("sam.model.image_encoder.") for k in state)
    state["cliplayer.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="cliplayer"):
        load_state(head, state, head_prefix="")
    state.pop("cliplayer.0.weight")
    state.pop("text_layer_weights")
    with pytest.raises(CheckpointError, match="text_layer_weights"):
        load_state(head, state, head_prefix="")
    # Any other frozen or unknown tensor is still refused.
    state = dict(trainable_state_dict(head), **{"sam.model.unknown.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected.*sam.model.unknown"):
        load_state(head, state, head_prefix="")


# ---------------------------------------------------------------------------------------------
# SAM prompts.


def test_mask_boxes():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:8] = True
    masks[1, 7, 0] = True
    boxes = mask_boxes(masks)
    expected = torch.tensor([[3, 2, 8, 5], [0, 7, 1, 8], [0, 0, 12, 10]], dtype=torch.float32)
    torch.testing.assert_close(boxes, expected)


def test_prepare_sam_image_inputs_agree():
    rgb = np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    a = prepare_sam_image(rgb, 64)
    b = prepare_sam_image(Image.fromarray(rgb), 64)
    c = prepare_sam_image(torch.from_numpy(rgb).permute(2, 0, 1), 64)
    assert a.original_size == (45, 60) and a.input_size == (48, 64)
    torch.testing.assert_close(a.pixels, b.pixels)
    torch.testing.assert_close(a.pixels, c.pixels)
    with pytest.raises(ValueError, match="uint8"):
        prepare_sam_image(rgb.astype(np.float32), 64)


def test_mask_prompt_pads_with_background():
    refiner = SAMRefiner(model=tiny_sam())  # 64 frame, 16x16 mask prompts
    coarse = torch.full((1, 18, 24), 2.0)
    prompt = refiner.mask_prompts(coarse, (48, 64))
    assert prompt.shape == (1, 1, 16, 16)
    # Rows 0..11 sample the image (48/64 of the frame); rows 12..15 only the padding.
    torch.testing.assert_close(prompt[0, 0, :12], torch.full((12, 16), 2.0))
    torch.testing.assert_close(prompt[0, 0, 12:], torch.full((4, 16), -1.0))
    # With logits below -1 the padding takes the minimum logit instead.
    coarse[0, 0, 0] = -5.0
    assert refiner.mask_prompts(coarse, (48, 64))[0, 0, 15, 15].item() == pytest.approx(-5.0)


def test_box_prompt_in_sam_frame():
    refiner = SAMRefiner(model=tiny_sam())
    coarse = torch.full((2, 45, 60), -10.0)
    coarse[0, 9:18, 15:30] = 10.0  # rows 9..17, cols 15..29 at the original size
    boxes = refiner.box_prompts(coarse, (45, 60))
    sx, sy = 64 / 60, 48 / 45
    expected = torch.tensor([[15 * sx, 9 * sy, 30 * sx, 18 * sy], [0.0, 0.0, 64.0, 48.0]])
    torch.testing.assert_close(boxes, expected)


# ---------------------------------------------------------------------------------------------
# The whole head on a tiny SAM: shapes, text prompts, gradients.


def _tiny_sample(dims: LMMDims, mask_ids: list[int]) -> tuple[LMMFeatures, np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    t, g = len(mask_ids), dims.grid
    logits = torch.randn(dims.num_layers, dims.num_heads, t, g * g, generator=gen)
    attn = logits.softmax(-1).reshape(dims.num_layers, dims.num_heads, t, g, g)
    features = LMMFeatures(
        attn=attn,
        hidden=torch.randn(dims.num_layers, t, dims.hidden_size, generator=gen),
        vision=torch.zeros(0),
        pixel_values=torch.zeros(3, dims.image_size, dims.image_size),
        mask_ids=torch.tensor(mask_ids),
        # A landscape image letterboxed into the 24x24 square: 18 rows, 3 padded above and below.
        meta={
            "image_shape": {"height": 18, "width": 24},
            "padded_shape": {"height": 24, "width": 24},
            "padding": {"before_height": 3, "after_height": 3, "before_width": 0, "after_width": 0},
        },
    )
    image = np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    return features, image


@pytest.fixture()
def tiny_head():
    dims = LMMDims(
        num_layers=2, num_heads=2, hidden_size=16, grid=6, vision_channels=16,
        vision_layers=(), image_size=24,
    )  # fmt: skip
    head = UNetSAMHead(
        dims=dims,
        sam=dict(type=SAMRefiner, model=tiny_sam()),
        mask_head=dict(type=UNetMaskHead, base_channels=8),
    )
    return head, dims


def test_text_prompts_keep_every_token(tiny_head):
    head, dims = tiny_head
    features, _ = _tiny_sample(dims, [-1, 0, 0, 1, -1, 2, 2, 2])
    embeds = head.phrase_token_embeddings(features.hidden, features.mask_ids)
    assert [tuple(e.shape) for e in embeds] == [(2, 32), (1, 32), (3, 32)]
    w = torch.softmax(head.text_layer_weights, 0)
    hbar = (features.hidden * w[:, None, None]).sum(0)
    torch.testing.assert_close(embeds[2], head.text_proj(hbar[5:8]))


def test_prepared_features_give_the_same_logits(tiny_head):
    """The U-Net reads each phrase's mean attention maps: the same logits from the prior that
    `prepare_features` computes (float32 [n, L*H, g, g]) as from the token maps."""
    head, dims = tiny_head
    features, image = _tiny_sample(dims, [-1, 0, 0, 1, -1, 2, 2, 2])
    prepared = head.prepare_features(features)
    assert prepared.attn is None and prepared.attn_prior.shape == (3, 4, 6, 6)
    assert prepared.attn_prior.dtype == torch.float32
    head.eval()
    with torch.no_grad():
        a, b = head(prepared, image), head(features, image)
    assert torch.equal(a["unet_logits"], b["unet_logits"])
    assert torch.equal(a["logits"], b["logits"])


def test_forward_backward_tiny_sam(tiny_head):
    head, dims = tiny_head
    features, image = _tiny_sample(dims, [-1, 0, 0, 1, -1, 2, 2, 2])
    head.train()
    assert not head.sam.model.image_encoder.training

    out = head(features, image)
    assert out["unet_logits"].shape == (3, 1, 64, 64)  # the 6x6 grid upsampled by 64/6
    # F-LMM's grid crop of the 64-map: rows floor(3 * 64/24) = 8 .. 8 + floor(18 * 64/24 + .5) = 48.
    assert out["coarse_logits"].shape == (3, 48, 64)
    assert out["logits"].shape == (3, 45, 60)

    target = torch.zeros(3, 45, 60)
    target[:, 10:30, 20:50] = 1
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], target)
    loss = loss + out["coarse_logits"].sigmoid().mean()
    loss.backward()

    def grads(module):
        return [p.grad for p in module.parameters()]

    assert all(p.requires_grad is False for p in head.sam.model.image_encoder.parameters())
    assert all(g is None for g in grads(head.sam.model.image_encoder))
    pe = head.sam.model.prompt_encoder
    decoder = head.sam.model.mask_decoder
    for name, param in [
        ("mask_head first conv", head.mask_head.encoder[0][0].convs[0].conv.weight),
        ("conv_seg", head.mask_head.conv_seg.weight),
        ("text_proj", head.text_proj.weight),
        ("text_layer_weights", head.text_layer_weights),
        ("mask prompt encoder", pe.mask_downscaling[0].weight),
        ("box corner embedding", pe.point_embeddings[2].weight),
        ("decoder transformer", decoder.transformer.layers[0].self_attn.q_proj.weight),
        ("decoder hypernetwork", decoder.output_hypernetworks_mlps[0].layers[0].weight),
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_sam_image_input_matches_raw_image(tiny_head):
    head, dims = tiny_head
    features, image = _tiny_sample(dims, [0, 1, 1])
    head.eval()
    with torch.no_grad():
        a = head(features, image)["logits"]
        b = head(features, head.sam.prepare_image(Image.fromarray(image)))["logits"]
    assert isinstance(head.sam.prepare_image(image), SAMImage)
    torch.testing.assert_close(a, b)


def test_missing_sam_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="sam_vit_l_0b3195.pth"):
        build_sam(variant="vit_l", checkpoint=tmp_path / "sam_vit_l_0b3195.pth")


SAM_L = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "checkpoints", "sam_vit_l_0b3195.pth")
)


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.skipif(not os.path.isfile(SAM_L), reason=f"SAM ViT-L weights not at {SAM_L}")
def test_official_sam_l_loads_frozen():
    refiner = SAMRefiner(model=dict(type=build_sam, variant="vit_l", checkpoint=SAM_L)).train()
    state = torch.load(SAM_L, map_location="cpu", weights_only=True)
    key = "image_encoder.patch_embed.proj.weight"
    torch.testing.assert_close(refiner.model.state_dict()[key], state[key])
    assert not refiner.model.image_encoder.training
    assert not any(p.requires_grad for p in refiner.model.image_encoder.parameters())
