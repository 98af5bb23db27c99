"""Mask losses and training-time mask metrics shared by both head families.

See docs/architecture.md, "Losses and ground truth".

loss = loss_mask_weight * BCE + loss_dice_weight * Dice, with mmdet's own loss classes:
`CrossEntropyLoss(use_sigmoid=True)` averaged over every pixel of every mask, and
`DiceLoss(use_sigmoid=True, naive_dice=True, eps=1)` averaged over masks. The default weights
(1.0 and 1.0) are those of the F-LMM and HG-LMM configs. The U-Net+SAM head applies the same loss
to its coarse and its SAM masks.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_pair(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"mask logits must be [n, h, w], got {tuple(logits.shape)}")
    if logits.shape != targets.shape:
        raise ValueError(
            f"mask logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in "
            "shape; resize the ground truth to the logits' size (nearest) before the loss"
        )
    if logits.shape[0] == 0:
        raise ValueError("no masks to compute a loss on (n = 0); skip samples without phrases")


class MaskLoss(nn.Module):
    """BCE + Dice over the n masks of one sample.

    Arguments:
      loss_mask_weight: weight of the sigmoid BCE (mmdet `CrossEntropyLoss.loss_weight`).
      loss_dice_weight: weight of the naive Dice loss (mmdet `DiceLoss.loss_weight`).
    """

    def __init__(self, *, loss_mask_weight: float = 1.0, loss_dice_weight: float = 1.0) -> None:
        super().__init__()
        # Imported here so that importing the heads does not pull in all of mmdet.
        from mmdet.models.losses import CrossEntropyLoss, DiceLoss

        self.loss_mask = CrossEntropyLoss(
            use_sigmoid=True, reduction="mean", loss_weight=loss_mask_weight
        )
        self.loss_dice = DiceLoss(
            use_sigmoid=True,
            activate=True,
            reduction="mean",
            naive_dice=True,
            eps=1.0,
            loss_weight=loss_dice_weight,
        )

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, prefix: str = ""
    ) -> dict[str, torch.Tensor]:
        """logits: [n, h, w] mask logits; targets: [n, h, w] binary (bool, int or float 0/1).

        Returns {prefix + "loss_mask": BCE mean over the n*h*w pixels,
                 prefix + "loss_dice": Dice mean over the n masks}, each already weighted.
        Use prefix="sam_" for the U-Net+SAM head's refined masks, as the reference logs them.
        """
        _check_pair(logits, targets)
        n = logits.shape[0]
        targets = targets.to(logits.dtype)
        loss_dice = self.loss_dice(logits.reshape(n, -1), targets.reshape(n, -1), avg_factor=n)
        loss_mask = self.loss_mask(
            logits.reshape(-1), targets.reshape(-1), avg_factor=logits.numel()
        )
        return {prefix + "loss_mask": loss_mask, prefix + "loss_dice": loss_dice}


@torch.no_grad()
def mask_metrics(
    logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Training-time logging: pixel accuracy and mean IoU of sigmoid(logits) > threshold.

    logits, targets: [n, h, w] (targets binary). Returns {prefix + "accuracy": mean over all
    pixels of (pred == target), prefix + "miou": mean over masks of I / (U + 1e-12)}, float32
    scalars. A mask that is empty in both prediction and target has IoU 0 here, as in the
    reference's training logs (the evaluation metrics treat that case explicitly).
    """
    _check_pair(logits, targets)
    pred = logits.float().sigmoid() > threshold
    gt = targets > 0.5 if targets.is_floating_point() else targets.bool()
    accuracy = (pred == gt).float().mean()
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    miou = (inter / (union + 1e-12)).mean()
    return {prefix + "accuracy": accuracy, prefix + "miou": miou}
