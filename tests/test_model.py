"""GroundingModel on a tiny LLaVA + HG head: training signal, frozen parts, batches, round trip."""

from __future__ import annotations

import copy

import pytest
import torch

from hg_lmm.heads.base import FINAL, MaskHead
from hg_lmm.heads.hg import HGHead
from hg_lmm.lmm.llava import TRAIN_PROMPT, LlavaAdapter
from hg_lmm.lmm.processors import letterbox_meta
from hg_lmm.model import GroundingModel, original_hw
from hg_lmm.utils.checkpoint import load_state, save_checkpoint

VISION_LAYERS = (0, 1, 2, 3, 0, 1, 2, 3)


def _sample(tok, size, gen, n_phrases=2, hw=(30, 40)):
    words = ["the red circle", "the blue square", "the green star"]
    ids = tok(TRAIN_PROMPT).input_ids
    mids = [-1] * len(ids)
    for k in range(n_phrases):
        t = tok.encode(words[k], add_special_tokens=False)
        ids, mids = ids + t, mids + [k] * len(t)
    masks = torch.zeros(n_phrases, *hw, dtype=torch.bool)
    for k in range(n_phrases):
        masks[k, 5 * k : 5 * k + 12, 4 : 20 + 5 * k] = True
    h = round(size * hw[0] / max(hw))
    return {
        "input_ids": torch.tensor(ids),
        "mask_ids": torch.tensor(mids),
        "pixel_values": torch.randn(3, size, size, generator=gen),
        "meta": letterbox_meta(h, size, size),
        "masks": masks,
        "image_hw": hw,
    }


@pytest.fixture()
def model(tiny_llava):
    lmm, tok, _ = tiny_llava
    adapter = LlavaAdapter(lmm=lmm, tokenizer=tok, processor=None, vision_layers=VISION_LAYERS)
    return GroundingModel(lmm=adapter, head=dict(type=HGHead))


@pytest.fixture()
def batch(tiny_llava):
    _, tok, _ = tiny_llava
    gen = torch.Generator().manual_seed(0)
    size = tiny_llava[0].config.vision_config.image_size
    return [_sample(tok, size, gen, 2), _sample(tok, size, gen, 3, hw=(40, 28))]


def test_one_step_trains_only_the_head(model, batch):
    lmm_before = {k: v.clone() for k, v in model.lmm.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(any(p is q for q in model.head.parameters()) for p in params)
    opt = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    losses = model(batch, mode="loss")
    assert {"loss_mask", "loss_dice", "accuracy", "miou"} <= set(losses)
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"no gradient reached {no_grad}"
    opt.step()
    for k, v in model.lmm.state_dict().items():
        assert torch.equal(v, lmm_before[k]), f"frozen LMM tensor {k} changed"
    changed = [k for k, v in model.head.state_dict().items() if not torch.equal(v, head_before[k])]
    assert "text_proj.weight" in changed and "lcb.conv1.1.running_mean" in changed


def test_predict_shapes_per_sample(model, batch):
    model.eval()
    preds = model(batch, mode="predict")
    assert [tuple(p["masks"].shape) for p in preds] == [(2, 30, 40), (3, 40, 28)]
    assert preds[0]["masks"].dtype == torch.bool
    tensors = model(batch, mode="tensor")
    assert torch.equal(tensors[1], preds[1]["logits"])


def test_one_source_for_the_original_size(model, batch):
    """Predictions come at the image's size when the sample has one, else at its `image_hw`;
    a sample with neither is refused by name."""
    from PIL import Image

    model.eval()
    with_image = dict(batch[0], image=Image.new("RGB", (50, 20)))  # PIL size is (w, h)
    assert original_hw(with_image) == (20, 50)
    assert original_hw(batch[0]) == (30, 40)
    pred = model([with_image], mode="predict")[0]
    assert tuple(pred["masks"].shape) == (2, 20, 50)
    without = {k: v for k, v in batch[0].items() if k != "image_hw"}
    with pytest.raises(KeyError, match="neither an 'image' nor an 'image_hw'"):
        model([without], mode="predict")


def test_state_dict_excludes_frozen_lmm(model):
    keys = model.state_dict().keys()
    assert keys and all(k.startswith("head.") for k in keys)
    assert "head.lcb.conv1.1.running_var" in keys


def test_round_trip_gives_identical_predictions(model, batch, tiny_llava, tmp_path):
    model.train()
    model(batch, mode="loss")  # update BN statistics
    path = save_checkpoint(model, tmp_path / "head.pth")
    lmm, tok, _ = tiny_llava
    fresh = GroundingModel(
        lmm=LlavaAdapter(lmm=lmm, tokenizer=tok, processor=None, vision_layers=VISION_LAYERS),
        head=dict(type=HGHead),
    )
    report = load_state(fresh, path)
    assert not report.missing and not report.unexpected
    model.eval(), fresh.eval()
    a, b = model(batch, mode="predict"), fresh(batch, mode="predict")
    for x, y in zip(a, b):
        assert torch.equal(x["logits"], y["logits"])


def test_mismatched_gt_count_is_named(model, batch):
    batch[0]["masks"] = batch[0]["masks"][:1]
    with pytest.raises(ValueError, match="1 ground-truth masks but 2 phrases"):
        model(batch, mode="loss")


@pytest.mark.parametrize("variant", ["deepseek_vl_1_3b", "deepseek_vl_7b"])
def test_released_hg_state_dict_loads_into_the_model(fixtures_dir, variant, caplog):
    """A state dict named and shaped like a released HG checkpoint (no `head.` prefix, the 7B's
    unused `cliplayer.*` included) loads with zero missing and zero unexpected head keys."""
    import json
    import logging

    from hg_lmm.lmm.base import LMMDims
    from hg_lmm.testing.golden import golden_state_dict

    with open(f"{fixtures_dir}/hg_head/{variant}.json") as f:
        fx = json.load(f)
    dims = LMMDims(
        num_layers=fx["num_layers"], num_heads=fx["num_heads"], hidden_size=fx["hidden_size"],
        grid=fx["grid"], vision_channels=fx["vision_channels"],
        vision_layers=(3, 6, 9, 12, 15, 18, 20, 23), image_size=fx["image_size"],
    )  # fmt: skip
    container = torch.nn.Module()  # the model's naming: the head sits at `head.`
    container.head = HGHead(dims=dims)
    with caplog.at_level(logging.INFO):
        report = load_state(container, golden_state_dict(fx["state_dict_shapes"]))
    assert not report.missing and not report.unexpected
    assert len(report.loaded) == len(container.state_dict())
    has_clip = any(k.startswith("cliplayer.") for k in fx["state_dict_shapes"])
    assert bool(report.ignored) == has_clip == (variant == "deepseek_vl_7b")
    if has_clip:
        assert "ignored" in caplog.text and "cliplayer" in caplog.text


def test_unet_sam_model_step_keeps_lmm_and_sam_encoder(tiny_llava, batch):
    """U-Net+SAM head: one step trains the U-Net, text path, SAM prompt encoder and decoder only."""
    from PIL import Image

    from hg_lmm.heads.unet_sam import SAMRefiner, UNetMaskHead, UNetSAMHead
    from hg_lmm.testing.tiny_sam import tiny_sam

    lmm, tok, _ = tiny_llava
    model = GroundingModel(
        lmm=LlavaAdapter(lmm=lmm, tokenizer=tok, processor=None, vision_layers=VISION_LAYERS),
        head=dict(
            type=UNetSAMHead,
            sam=dict(type=SAMRefiner, model=tiny_sam()),
            mask_head=dict(type=UNetMaskHead, base_channels=8),
        ),
    )
    for s in batch:  # the SAM refiner works on the original image
        h, w = s["image_hw"]
        s["image"] = Image.new("RGB", (w, h), (90, 120, 200))
    frozen = {k: v.clone() for k, v in model.lmm.state_dict().items()}
    frozen.update(
        {f"enc.{k}": v.clone() for k, v in model.head.sam.model.image_encoder.state_dict().items()}
    )
    trainable = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    losses = model(batch, mode="loss")
    assert {"loss_mask", "loss_dice", "sam_loss_mask", "sam_loss_dice"} <= set(losses)
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    after = dict(model.lmm.state_dict())
    after.update(
        {f"enc.{k}": v for k, v in model.head.sam.model.image_encoder.state_dict().items()}
    )
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    changed = {
        n
        for n, p in model.named_parameters()
        if n in trainable and not torch.equal(p, trainable[n])
    }
    for part in (
        "head.mask_head.",
        "head.text_proj.",
        "head.sam.model.prompt_encoder.mask_downscaling",
        "head.sam.model.mask_decoder.transformer",
    ):
        assert any(n.startswith(part) for n in changed), part
    keys = model.state_dict().keys()
    assert not any(k.startswith(("lmm.", "head.sam.model.image_encoder.")) for k in keys)


class _FixedHead(MaskHead):
    """A third head, written against `MaskHead` only: given [n, h, w] logits whatever the
    features, plus an auxiliary map that `loss_prefixes` trains as "aux_*"."""

    loss_prefixes = {FINAL: "", "aux": "aux_"}

    def __init__(self, logits, dims=None):
        super().__init__()
        self.logits = logits
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, features, image=None):
        return {FINAL: self.logits * self.scale, "aux": -self.logits * self.scale}


def test_a_new_head_needs_only_the_mask_head_interface(tiny_llava, batch):
    """Loss terms per `loss_prefixes`, predictions from the FINAL map; a module that is not a
    MaskHead, or an output without a named map, is refused with the interface's name."""
    lmm, tok, _ = tiny_llava
    adapter = LlavaAdapter(lmm=lmm, tokenizer=tok, processor=None, vision_layers=VISION_LAYERS)
    sample = dict(batch[0])
    n, (h, w) = sample["masks"].shape[0], sample["masks"].shape[-2:]
    model = GroundingModel(lmm=adapter, head=_FixedHead(torch.zeros(n, h, w)))
    losses = model([sample], mode="loss")
    assert {"loss_mask", "loss_dice", "aux_loss_mask", "aux_loss_dice"} <= set(losses)
    assert model([sample], mode="tensor")[0].shape == (n, h, w)
    with pytest.raises(TypeError, match="MaskHead"):
        GroundingModel(lmm=adapter, head=torch.nn.Linear(2, 2))
    model.head.forward = lambda features, image=None: {"aux": torch.zeros(n, h, w)}
    with pytest.raises(TypeError, match=r"returned \['aux'\]"):
        model([sample], mode="tensor")


def test_masks_threshold_the_resized_probabilities(tiny_llava, batch):
    """Evaluation as the references: sigmoid, resize (bilinear) to the original size, threshold.

    On a 1x2 map [10, -2] resized to 1x4, pixel 2 reads 1/4 of the 10 and 3/4 of the -2: the
    resized logit is +1.0 (a mask pixel), but the resized probability is
    0.25 * sigmoid(10) + 0.75 * sigmoid(-2) = 0.34 (not one), which is what F-LMM and HG-LMM report.
    """
    lmm, tok, _ = tiny_llava
    adapter = LlavaAdapter(lmm=lmm, tokenizer=tok, processor=None, vision_layers=VISION_LAYERS)
    logits = torch.tensor([[[10.0, -2.0]], [[-2.0, 10.0]]])
    model = GroundingModel(lmm=adapter, head=_FixedHead(logits)).eval()
    sample = {k: v for k, v in batch[0].items() if k != "masks"}
    sample["image_hw"] = (1, 4)
    pred = model([sample], mode="predict")[0]
    expected = torch.tensor([[[True, True, False, False]], [[False, False, True, True]]])
    assert torch.equal(pred["masks"], expected)
    assert torch.equal(pred["logits"] > 0, torch.tensor([[[1, 1, 1, 0]], [[0, 1, 1, 1]]]).bool())


def test_unet_sam_loss_targets_follow_flmm(tiny_llava, batch, monkeypatch):
    """Ground truth goes original -> meta image_shape -> each map (nearest), as F-LMM's dataset
    and loss resize it: the coarse target is the U-Net grid crop's size, SAM's the original."""
    import numpy as np
    from PIL import Image

    from hg_lmm.heads.unet_sam import SAMRefiner, UNetMaskHead, UNetSAMHead
    from hg_lmm.model import resize_masks
    from hg_lmm.testing.tiny_sam import tiny_sam

    lmm, tok, _ = tiny_llava
    adapter = LlavaAdapter(lmm=lmm, tokenizer=tok, processor=None, vision_layers=VISION_LAYERS)
    head = dict(
        type=UNetSAMHead,
        sam=dict(type=SAMRefiner, model=tiny_sam()),
        mask_head=dict(type=UNetMaskHead, base_channels=8),
    )
    model = GroundingModel(lmm=adapter, head=head)
    sample = dict(batch[0])
    # A 30x40 image letterboxed as 31x48 in a 48 square (8 rows above): the U-Net's 64-map is
    # cropped to rows 10..50 (41 rows), so the coarse target is 41x64.
    sample["meta"] = letterbox_meta(31, 48, 48)
    sample["image"] = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    gt = torch.zeros(2, 30, 40, dtype=torch.bool)
    gt[0, 3:17, 5:23], gt[1, 11:29, 1:37] = True, True
    sample["masks"] = gt
    seen = {}
    real = model.loss

    class Recorder(torch.nn.Module):
        def forward(self, logits, target, prefix=""):
            seen[prefix] = target.clone()
            return real(logits, target, prefix=prefix)

    monkeypatch.setattr(model, "loss", Recorder())
    model([sample], mode="loss")
    processed = resize_masks(gt.float(), (31, 48), "nearest")
    assert seen[""].shape == (2, 41, 64) and seen["sam_"].shape == (2, 30, 40)
    assert torch.equal(seen[""], resize_masks(processed, (41, 64), "nearest"))
    assert torch.equal(seen["sam_"], resize_masks(processed, (30, 40), "nearest"))
    # The two-step resize is not the one-step one here, so the test tells them apart (for SAM the
    # round trip through 31x48 moves pixels of the original mask, as in the reference).
    assert not torch.equal(seen[""], resize_masks(gt.float(), (41, 64), "nearest"))
    assert not torch.equal(seen["sam_"], gt.float())


# --- memory-flat training steps: the per-sample checkpointed head ----------------------------


def _twin_models(tiny_llava, head: dict):
    """Two models on the same frozen LMM with identical heads: checkpointed and plain."""
    lmm, tok, _ = tiny_llava
    adapter = LlavaAdapter(lmm=lmm, tokenizer=tok, processor=None, vision_layers=VISION_LAYERS)
    plain = GroundingModel(lmm=adapter, head=head, checkpoint_head=False)
    checkpointed = GroundingModel(lmm=adapter, head=copy.deepcopy(plain.head), checkpoint_head=True)
    return checkpointed, plain


def _step(model, batch):
    """One training step's losses and gradients, from a fixed RNG state (dropout)."""
    model.train()
    torch.manual_seed(1)
    losses = model(batch, mode="loss")
    sum(v for k, v in losses.items() if "loss" in k).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in losses.items()}, grads


def _unet_sam_head():
    from hg_lmm.heads.unet_sam import SAMRefiner, UNetMaskHead, UNetSAMHead
    from hg_lmm.testing.tiny_sam import tiny_sam

    return dict(
        type=UNetSAMHead,
        sam=dict(type=SAMRefiner, model=tiny_sam()),
        mask_head=dict(type=UNetMaskHead, base_channels=8),
    )


def _with_images(batch):
    from PIL import Image

    for s in batch:  # the SAM refiner works on the original image
        h, w = s["image_hw"]
        s["image"] = Image.new("RGB", (w, h), (90, 120, 200))
    return batch


@pytest.mark.parametrize("family", ["hg", "unet_sam"])
def test_checkpointed_step_equals_the_plain_step(tiny_llava, batch, family):
    """Same losses and gradients (1e-5) as keeping every sample's graph; dropout replays the
    same masks and BatchNorm running statistics are updated once, not again on recompute."""
    head = dict(type=HGHead) if family == "hg" else _unet_sam_head()
    if family == "unet_sam":
        batch = _with_images(batch)
    checkpointed, plain = _twin_models(tiny_llava, head)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in plain.head.modules()) or (
        family == "unet_sam"
    )
    encoder_calls = []
    if family == "unet_sam":  # SAM's frozen encoder runs once per sample, not again in backward
        encoder = checkpointed.head.sam.model.image_encoder
        encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    losses_a, grads_a = _step(checkpointed, batch)
    losses_b, grads_b = _step(plain, batch)
    assert losses_a.keys() == losses_b.keys()
    for k in losses_a:
        assert torch.allclose(losses_a[k], losses_b[k], atol=1e-6), k
    assert grads_a.keys() == grads_b.keys()
    for name, g in grads_a.items():
        assert g is not None or grads_b[name] is None, name
        if g is not None:
            assert torch.allclose(g, grads_b[name], rtol=1e-5, atol=1e-5), name
    buffers_b = dict(plain.head.named_buffers())
    for name, buf in checkpointed.head.named_buffers():
        assert torch.equal(buf, buffers_b[name]), name
    if family == "hg":
        assert int(checkpointed.head.lcb.conv1[1].num_batches_tracked) == len(batch)
    else:
        assert len(encoder_calls) == len(batch)


def _saved_bytes(model, batch) -> int:
    """Bytes the autograd graph keeps for the backward outside any checkpointed region."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch, mode="loss")
    return total


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def test_checkpointed_graph_keeps_only_the_features(tiny_llava, batch):
    """With the checkpointed head, the graph keeps each sample's feature tensors, with the
    attention maps pooled per phrase (`prepare_features`), and nothing of its head; without it,
    every sample's head activations stay until the backward."""
    checkpointed, plain = _twin_models(tiny_llava, dict(type=HGHead))
    extracted = checkpointed.lmm.extract_batch(batch, dtype=None)
    prepared = [checkpointed.head.prepare_features(f) for f in extracted]
    features = sum(
        _nbytes(getattr(f, name))
        for f in prepared
        for name in ("attn_prior", "hidden", "vision", "pixel_values")
    )
    assert all(f.attn is None for f in prepared)
    # Each phrase's maps instead of each token's: fewer bytes whenever a phrase has 2+ tokens.
    assert sum(_nbytes(f.attn_prior) for f in prepared) < sum(_nbytes(f.attn) for f in extracted)
    assert _saved_bytes(checkpointed, batch) == features
    assert _saved_bytes(checkpointed, batch[:1]) < features
    assert _saved_bytes(plain, batch) > 10 * features


def test_eval_and_no_grad_do_not_checkpoint(model, batch):
    """predict (no grad) and eval-mode losses run the head once, without recomputation."""
    calls = []
    model.head.register_forward_hook(lambda *_: calls.append(1))
    model.eval()
    model(batch, mode="loss")
    model(batch, mode="predict")
    assert len(calls) == 2 * len(batch)


def test_a_dataset_record_is_a_sample(tiny_llava, batch):
    """The datasets' `GroundingSample` goes to the model as it is (a read-only mapping of its
    fields, `caption_start` included) and gives the losses of the equivalent dict."""
    import numpy as np
    from PIL import Image

    from hg_lmm.datasets.sample import GroundingSample, Piece
    from hg_lmm.lmm.llava.processing import LlavaImageProcessor

    lmm, tok, _ = tiny_llava
    processor = LlavaImageProcessor(image_size=lmm.config.vision_config.image_size)
    adapter = LlavaAdapter(lmm=lmm, tokenizer=tok, processor=processor, vision_layers=VISION_LAYERS)
    model = GroundingModel(lmm=adapter, head=dict(type=HGHead))

    s = batch[0]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    start = int((s["mask_ids"] < 0).sum())
    record = GroundingSample(
        image=image,
        pieces=[Piece("x", 0), Piece("y", 1)],
        masks=s["masks"],
        plural=[False, False],
        isthing=[True, True],
        source="test",
        input_ids=s["input_ids"],
        mask_ids=s["mask_ids"],
        caption_start=start,
    )
    assert record["caption_start"] == start and "pixel_values" not in record
    plain = {k: record[k] for k in ("image", "input_ids", "mask_ids", "masks", "caption_start")}
    model.eval()
    with torch.no_grad():
        a, b = model([record], mode="loss"), model([plain], mode="loss")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- evaluation: the samples of one image share its frozen work -------------------------------


def _one_image_samples(tiny_llava, captions):
    """Samples of one image (same pixels, PIL image and size), one caption each."""
    from PIL import Image

    _, tok, _ = tiny_llava
    size = tiny_llava[0].config.vision_config.image_size
    pixels = torch.randn(3, size, size, generator=torch.Generator().manual_seed(5))
    hw = (30, 40)
    image = Image.new("RGB", hw[::-1], (90, 120, 200))
    out = []
    for caption in captions:
        ids = tok(TRAIN_PROMPT).input_ids
        mids = [-1] * len(ids)
        for k, words in enumerate(caption):
            t = tok.encode(words, add_special_tokens=False)
            ids, mids = ids + t, mids + [k] * len(t)
        out.append(
            {
                "input_ids": torch.tensor(ids),
                "mask_ids": torch.tensor(mids),
                "pixel_values": pixels,
                "meta": letterbox_meta(round(size * hw[0] / hw[1]), size, size),
                "image": image,
            }
        )
    return out


@pytest.mark.parametrize("family", ["hg", "unet_sam"])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_predict_group_equals_predict(tiny_llava, family, batch_size):
    """Both heads: the logits agree to 1e-5 (float32) and the thresholded masks are identical,
    with the LMM's vision pass, its prompt and the head's image work (SAM's encoder) done once."""
    model, _ = _twin_models(tiny_llava, dict(type=HGHead) if family == "hg" else _unet_sam_head())
    model.eval()
    captions = [["the red circle"], ["a", "the blue square on the left"], ["the green star"]]
    samples = _one_image_samples(tiny_llava, captions)
    prepared = []
    prepare = model.head.prepare_image
    model.head.prepare_image = lambda image: prepared.append(1) or prepare(image)
    try:
        grouped = model.predict_group(samples, batch_size=batch_size)
        assert len(prepared) == 1
        alone = model.predict(samples)
    finally:
        del model.head.prepare_image
    assert len(prepared) == 1 + len(samples)
    for g, a in zip(grouped, alone):
        assert g["logits"].shape == a["logits"].shape
        assert float((g["logits"] - a["logits"]).abs().max()) < 1e-5
        assert torch.equal(g["masks"], a["masks"])
    assert any(bool(a["masks"].any()) for a in alone)  # not trivially all empty
    assert model.predict_group([]) == []
