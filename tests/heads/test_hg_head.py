"""HG head: golden fixtures of the reference (1.3B, 7B), LLaVA sizing, tiny runs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hg_lmm.heads.hg import HGHead, hg_geometry
from hg_lmm.heads.pooling import phrase_pooling
from hg_lmm.lmm.base import LMMDims, LMMFeatures
from hg_lmm.lmm.processors import letterbox_meta
from hg_lmm.testing.golden import golden_state_dict, hash_uniform
from hg_lmm.utils.masks import unpad_to_image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hg_head"
VARIANTS = ["deepseek_vl_1_3b", "deepseek_vl_7b"]
SELECTED_LAYERS = (3, 6, 9, 12, 15, 18, 20, 23)


def _fixture(variant: str) -> dict:
    return json.loads((FIXTURES / f"{variant}.json").read_text())


def _dims(fx: dict) -> LMMDims:
    return LMMDims(
        num_layers=fx["num_layers"],
        num_heads=fx["num_heads"],
        hidden_size=fx["hidden_size"],
        grid=fx["grid"],
        vision_channels=fx["vision_channels"],
        vision_layers=SELECTED_LAYERS,
        image_size=fx["image_size"],
    )


def _golden_features(fx: dict) -> LMMFeatures:
    """The fixture's input recipe (docs/architecture.md, "Golden fixtures and tests")."""
    inputs = fx["inputs"]
    num_tokens = fx["grid"] ** 2
    return LMMFeatures(
        attn=hash_uniform(inputs["attention"]["shape"], inputs["attention"]["seed"]).abs()
        / num_tokens,
        hidden=inputs["hidden_states"]["scale"]
        * hash_uniform(inputs["hidden_states"]["shape"], inputs["hidden_states"]["seed"]),
        vision=inputs["vision_features"]["scale"]
        * hash_uniform(inputs["vision_features"]["shape"], inputs["vision_features"]["seed"]),
        pixel_values=inputs["pixel_values"]["scale"]
        * hash_uniform(inputs["pixel_values"]["shape"], inputs["pixel_values"]["seed"]),
        mask_ids=torch.tensor(fx["text_mask_ids"], dtype=torch.long),
        meta=fx["meta_data"],
    )


def _drop_ignored(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    prefixes = HGHead.IGNORED_CHECKPOINT_PREFIXES
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    return kept, sorted(k for k in state if k.startswith(prefixes))


class _GoldenRun:
    """One reference comparison: the head, its cropped logits and the per-module outputs."""

    def __init__(self, variant: str) -> None:
        self.fx = fx = _fixture(variant)
        self.expected = torch.load(FIXTURES / f"{variant}_expected.pt")["expected_pred_masks"]
        self.head = HGHead(dims=_dims(fx))
        state, _ = _drop_ignored(golden_state_dict(fx["state_dict_shapes"]))
        self.head.load_state_dict(state, strict=True)
        self.head.eval()
        self.features = _golden_features(fx)
        self.records: dict[str, list[torch.Tensor]] = {}
        hooks = [
            getattr(self.head, name).register_forward_hook(self._recorder(name))
            for name in ("lifg", "lcb", "ldsi", "fuse_maskhead")
        ]
        with torch.no_grad():
            self.logits = self.head(self.features)["logits"]
            self.embeddings = self.head.phrase_embeddings(
                self.features.hidden, self.features.mask_ids
            )
        for hook in hooks:
            hook.remove()

    def _recorder(self, name: str):
        def hook(module, args, output):
            outs = output if isinstance(output, list) else [output]
            self.records.setdefault(name, []).extend(o.detach() for o in outs)

        return hook


# Each golden run is built once per module: ~3-4 s (1.3B) and ~5-7 s (7B) on 2 shared cores.
@pytest.fixture(scope="module", params=VARIANTS)
def golden(request) -> _GoldenRun:
    return _GoldenRun(request.param)


def _assert_summary(tensor: torch.Tensor, ref: dict, what: str) -> None:
    assert list(tensor.shape) == ref["shape"], what
    t = tensor.double()
    # Sums can cancel, so they are compared against the scale of the absolute sum.
    assert abs(t.sum().item() - ref["sum"]) <= 1e-5 * ref["abs_sum"] + 1e-6, what
    assert t.abs().sum().item() == pytest.approx(ref["abs_sum"], rel=1e-5), what
    head = torch.tensor(ref["head"], dtype=torch.float64)
    torch.testing.assert_close(t.flatten()[: len(head)], head, atol=1e-4, rtol=0, msg=what)


# -- golden fixtures -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_names_and_shapes_match_released_checkpoints(variant):
    fx = _fixture(variant)
    head = HGHead(dims=_dims(fx))
    expected, dropped = _drop_ignored({k: tuple(s) for k, s in fx["state_dict_shapes"].items()})
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours == expected
    if variant == "deepseek_vl_7b":
        assert dropped == [f"cliplayer.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    else:
        assert dropped == []
    assert torch.equal(head.text_layer_weights.detach(), torch.ones(fx["num_layers"]))


def test_golden_cropped_logits(golden):
    fx = golden.fx
    stride = fx["expected_stride"]
    assert list(golden.logits.shape) == fx["expected_shape"]
    torch.testing.assert_close(
        golden.logits[..., ::stride, ::stride], golden.expected, atol=1e-4, rtol=0
    )


def test_golden_stats(golden):
    # expected_stats are the sum and absolute sum of the full-resolution cropped logits.
    stats = golden.fx["expected_stats"]
    out = golden.logits.double()
    assert out.sum().item() == pytest.approx(stats["sum"], rel=1e-3)
    assert out.abs().sum().item() == pytest.approx(stats["abs_sum"], rel=1e-3)


def test_golden_intermediates(golden):
    inter = golden.fx["intermediates"]
    # The reference recorded text_proj on its last call: phrase 2's single token, i.e. e_2.
    _assert_summary(golden.embeddings[-1:], inter["text_proj"][0], "text_proj")
    for name in ("lifg", "lcb", "ldsi", "fuse_maskhead"):
        ours = golden.records[name]
        assert len(ours) == len(inter[name]), name
        for i, (tensor, ref) in enumerate(zip(ours, inter[name])):
            _assert_summary(tensor, ref, f"{name}[{i}]")


# -- sizing rules ----------------------------------------------------------------------------


def _llava_dims() -> LMMDims:
    return LMMDims(
        num_layers=32,
        num_heads=32,
        hidden_size=4096,
        grid=24,
        vision_channels=4096,
        vision_layers=SELECTED_LAYERS,
        image_size=336,
    )


def test_geometry_rules_reproduce_reference_sizes():
    geo_13b = hg_geometry(_dims(_fixture("deepseek_vl_1_3b")))
    assert geo_13b.stage_sizes == (96, 48, 24, 12) and geo_13b.strided_last_stage
    assert geo_13b.lcb_extra_halvings == 0 and geo_13b.attn_channels == (384, 96)
    assert geo_13b.output_size == 384 and geo_13b.lifg_width == 128
    geo_7b = hg_geometry(_dims(_fixture("deepseek_vl_7b")))
    assert geo_7b.stage_sizes == (128, 64, 32, 16) and not geo_7b.strided_last_stage
    assert geo_7b.lcb_extra_halvings == 1 and geo_7b.attn_channels == (960, 384, 96)
    assert geo_7b.output_size == 512 and geo_7b.lifg_width == 256
    geo_llava = hg_geometry(_llava_dims())
    # The reference's own LLaVA target sizes; the fusion now chains them (10 -> 21 -> 42 -> 84).
    assert geo_llava.stage_sizes == (84, 42, 21, 10) and not geo_llava.strided_last_stage
    assert geo_llava.lcb_extra_halvings == 0 and geo_llava.attn_channels == (1024, 384, 96)
    assert geo_llava.output_size == 336


# -- training-style runs ---------------------------------------------------------------------


def _random_features(dims: LMMDims, mask_ids: list[int], meta: dict) -> LMMFeatures:
    g, t = dims.grid, len(mask_ids)
    attn = torch.rand(dims.num_layers, dims.num_heads, t, g, g)
    return LMMFeatures(
        attn=attn / attn.sum(dim=(-1, -2), keepdim=True),
        hidden=torch.randn(dims.num_layers, t, dims.hidden_size),
        vision=torch.randn(8, g * g, dims.vision_channels),
        pixel_values=torch.randn(3, dims.image_size, dims.image_size),
        mask_ids=torch.tensor(mask_ids),
        meta=meta,
    )


def _letterbox_meta(size: int, height: int, width: int) -> dict:
    return letterbox_meta(height, width, size)


def _train_step(dims: LMMDims, mask_ids: list[int], image_hw: tuple[int, int]) -> HGHead:
    head = HGHead(dims=dims).train()
    meta = _letterbox_meta(dims.image_size, *image_hw)
    features = _random_features(dims, mask_ids, meta)
    logits = head(features)["logits"]
    assert logits.shape == (max(mask_ids) + 1, *image_hw)
    target = (torch.rand_like(logits) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    loss.backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None]
    assert missing == [], f"no gradient reached {missing}"
    zero = [name for name, p in head.named_parameters() if not p.grad.abs().sum() > 0]
    assert zero == [], f"zero gradient in {zero}"
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    return head


@pytest.mark.parametrize(
    "image_size, expected_stages",
    [
        (96, (24, 12, 6, 3)),  # 1.3B-like: s1 = 4g, strided stage 4
        (84, (21, 10, 5, 2)),  # LLaVA-like: stages that do not halve exactly
        (200, (25, 12, 6, 3)),  # 7B-like: one extra lcb halving (conv1_2, conv1_3)
        (24, (6, 3, 1, 1)),  # the tiny LLaVA test model's pixels
    ],
)
def test_tiny_head_trains(image_size, expected_stages):
    dims = LMMDims(
        num_layers=2,
        num_heads=4,
        hidden_size=32,
        grid=6,
        vision_channels=32,
        vision_layers=(0, 1, 2, 3, 4, 5, 6, 7),
        image_size=image_size,
    )
    assert hg_geometry(dims).stage_sizes == expected_stages
    h = image_size - image_size // 4
    mask_ids = [-1, 0, 0, -1, 1, 2, 2, -1]
    head = _train_step(dims, mask_ids, (h, image_size))
    assert hasattr(head.lcb, "conv1_2") == (image_size == 200)
    features = _random_features(dims, mask_ids, _letterbox_meta(image_size, h, image_size))
    with torch.no_grad():
        low = head.eval().mask_logits(features)
    s = head.geometry.output_size
    assert low.shape == (3, 1, s, s)


def test_llava_sized_head_trains():
    # Full LLaVA-1.5 sizes (~4 s on CPU): the reference could not run these; the fusion now chains.
    head = _train_step(_llava_dims(), [-1, 0, 0, 1, -1], (336, 252))
    assert head.geometry.stage_sizes == (84, 42, 21, 10)


# -- errors and helpers ----------------------------------------------------------------------


def _tiny_dims() -> LMMDims:
    return LMMDims(
        num_layers=2,
        num_heads=4,
        hidden_size=32,
        grid=6,
        vision_channels=32,
        vision_layers=(0, 1, 2, 3, 4, 5, 6, 7),
        image_size=24,
    )


def test_phrase_without_tokens_raises():
    dims = _tiny_dims()
    head = HGHead(dims=dims).eval()
    features = _random_features(dims, [-1, 0, 0, 2, -1], _letterbox_meta(24, 24, 24))
    with pytest.raises(ValueError, match=r"phrase\(s\) \[1\] have no token"):
        head(features)
    with pytest.raises(ValueError, match="no phrase"):
        phrase_pooling(torch.tensor([-1, -1]))


def test_feature_shape_mismatch_names_the_field():
    dims = _tiny_dims()
    head = HGHead(dims=dims).eval()
    features = _random_features(dims, [0, 0, 1], _letterbox_meta(24, 24, 24))
    features.vision = features.vision[:, :, :16]
    with pytest.raises(ValueError, match="LMMFeatures.vision"):
        head(features)


def test_prepared_features_give_the_same_logits():
    """`prepare_features` pools the attention maps per phrase (n maps instead of T) and the head
    gives bit-identical logits on them; a wrong-shaped prior is named like any field."""
    dims = _tiny_dims()
    head = HGHead(dims=dims).eval()
    features = _random_features(dims, [-1, 0, 0, 1, 2, 2, 2], _letterbox_meta(24, 24, 24))
    prepared = head.prepare_features(features)
    assert prepared.attn is None and prepared.attn_prior.shape == (3, 8, 6, 6)
    with torch.no_grad():
        assert torch.equal(head(prepared)["logits"], head(features)["logits"])
    prepared.attn_prior = prepared.attn_prior[:2]
    with pytest.raises(ValueError, match="LMMFeatures.attn_prior"):
        head(prepared)


def test_phrase_embeddings_are_token_means():
    dims = _tiny_dims()
    head = HGHead(dims=dims).eval()
    features = _random_features(dims, [-1, 0, 0, 1], _letterbox_meta(24, 24, 24))
    emb = head.phrase_embeddings(features.hidden, features.mask_ids)
    w = torch.softmax(head.text_layer_weights, dim=0)
    tokens = head.text_proj((features.hidden * w[:, None, None]).sum(0))
    torch.testing.assert_close(emb, torch.stack([tokens[1:3].mean(0), tokens[3]]))


def test_unpad_to_image_crops_the_image_region():
    meta = _letterbox_meta(8, 4, 6)  # top 2, left 1
    logits = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    torch.testing.assert_close(unpad_to_image(logits, meta), logits[:, 2:6, 1:7])
    low = unpad_to_image(logits[:, None, ::2, ::2], meta)  # resized to 8x8 first
    assert low.shape == (2, 1, 4, 6)
    with pytest.raises(ValueError, match="padded_shape.height"):
        unpad_to_image(logits, {"padding": meta["padding"], "image_shape": meta["image_shape"]})
