"""Mask losses and logging metrics on hand-checkable cases."""

from __future__ import annotations

import math

import pytest
import torch

from hg_lmm.heads.losses import MaskLoss, mask_metrics


@pytest.fixture(scope="module")
def loss():
    return MaskLoss()


def test_zero_logits_give_log2_bce(loss):
    target = torch.zeros(2, 3, 4)
    target[0, :, :2] = 1
    out = loss(torch.zeros(2, 3, 4), target)
    assert out["loss_mask"].item() == pytest.approx(math.log(2), rel=1e-6)
    # Dice with sigmoid = 0.5 everywhere: mask 0 has a = 3, b = 6, c = 6 -> 1 - 7/13;
    # mask 1 has a = 0, b = 6, c = 0 -> 1 - 1/7.
    expected_dice = ((1 - 7 / 13) + (1 - 1 / 7)) / 2
    assert out["loss_dice"].item() == pytest.approx(expected_dice, rel=1e-6)


def test_perfect_prediction_is_nearly_free(loss):
    target = torch.zeros(3, 8, 8, dtype=torch.bool)
    target[0, 2:6, 2:6] = True
    target[1, :, :4] = True
    logits = torch.where(target, 30.0, -30.0)
    out = loss(logits, target)
    assert out["loss_mask"].item() < 1e-6
    assert out["loss_dice"].item() < 1e-6
    metrics = mask_metrics(logits, target)
    assert metrics["accuracy"].item() == 1.0
    # Mask 2 is empty in both: IoU 0 by the logging convention, so the mean is 2/3.
    assert metrics["miou"].item() == pytest.approx(2 / 3)


def test_known_bce_value(loss):
    logits = torch.tensor([[[2.0, -1.0]]])
    target = torch.tensor([[[1.0, 1.0]]])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert loss(logits, target)["loss_mask"].item() == pytest.approx(expected, rel=1e-6)


def test_weights_and_prefix():
    target = torch.ones(1, 2, 2)
    logits = torch.zeros(1, 2, 2)
    base = MaskLoss()(logits, target)
    weighted = MaskLoss(loss_mask_weight=2.0, loss_dice_weight=0.5)(logits, target, prefix="sam_")
    assert set(weighted) == {"sam_loss_mask", "sam_loss_dice"}
    assert weighted["sam_loss_mask"].item() == pytest.approx(2 * base["loss_mask"].item())
    # all-ones target, sigmoid 0.5: a = 2, b = 2, c = 4 -> 1 - 5/7 = 2/7.
    assert base["loss_dice"].item() == pytest.approx(2 / 7, rel=1e-6)
    assert weighted["sam_loss_dice"].item() == pytest.approx(0.5 * 2 / 7, rel=1e-6)


def test_loss_is_differentiable(loss):
    logits = torch.randn(2, 5, 5, requires_grad=True)
    target = torch.rand(2, 5, 5) > 0.5
    out = loss(logits, target)
    (out["loss_mask"] + out["loss_dice"]).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_metrics_hand_case():
    # pred (logit > 0): [[1, 1], [0, 0]]; target [[1, 0], [0, 0]] -> 3/4 pixels right, IoU 1/2.
    logits = torch.tensor([[[3.0, 1.0], [-1.0, -4.0]]])
    target = torch.tensor([[[1, 0], [0, 0]]])
    m = mask_metrics(logits, target, prefix="sam_")
    assert m["sam_accuracy"].item() == pytest.approx(0.75)
    assert m["sam_miou"].item() == pytest.approx(0.5)


def test_shape_mismatch_says_how_to_fix(loss):
    with pytest.raises(ValueError, match="resize the ground truth"):
        loss(torch.zeros(1, 4, 4), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="n = 0"):
        mask_metrics(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4))
