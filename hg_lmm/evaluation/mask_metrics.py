"""Mask metrics of PNG, referring segmentation (RES) and ReasonSeg, from per-sample records.

Every metric is written once here and pinned by `tests/fixtures/metrics/metrics.json`, which the
reference's own metric code computed. The definitions, in short:

- mask IoU: `I = |pred & target|`, `U = |pred | target|` over valid pixels (pixels whose target
  equals `ignore_index` are dropped). What an empty union counts as is the metric's choice, so it
  is always an explicit argument.
- PNG: average recall = the area under `recall(IoU >= t)` on the grid `t_i = i * step`
  (`step = 1e-5`, `t < 1`), summed as `sum_{i < K-1} (t_{i+1} - t_i) * recall(t_i)` like the PNG
  code does (the last grid cell is not counted); accuracy at 0.5 uses `IoU > 0.5` (strict).
- RES (mmdet `RefSegMetric`): cIoU = sum I / sum U, mIoU = mean per-sample I / U with an empty
  union counting 0; both in percent.
- ReasonSeg (LISA): gIoU = mean per-sample I / U with an empty union counting 1; cIoU = sum I / sum
  U; target pixels equal to 255 are ignored.

GCG's metrics (matching, AP50, captions) are in `hg_lmm.evaluation.gcg_metrics`.

Multi-process evaluation stays exact because each rank only produces per-sample records
(`MaskRecord`: id, I, U, tags), the eval runner gathers them with each sample scored exactly once,
and every reduction is order-independent (integer sums, `math.fsum`, counts). One process and N
processes therefore give bit-identical numbers, whatever order the samples arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hg_lmm.utils.arrays import as_numpy

# ReasonSeg marks "ignore" pixels in the target with this value (LISA's `ignore_label`).
IGNORE_INDEX = 255

# `MaskRecord.meta` tag of a record whose target has no foreground pixel. Such a record is scored
# by its metric's rule for an empty union or target (an empty target with an empty prediction:
# IoU 0 in RES mIoU and PNG, 1 in ReasonSeg gIoU; with a non-empty prediction: IoU 0 everywhere,
# and the predicted pixels count in cIoU's union), and the eval runner logs how many there were.
EMPTY_TARGET = "empty_target"


# --------------------------------------------------------------------------------------------
# Mask IoU primitives
# --------------------------------------------------------------------------------------------


def _check_binary(array: np.ndarray, name: str, allowed_extra: int | None = None) -> None:
    """Reject soft masks: a probability map would silently count every nonzero as foreground."""
    if array.dtype == np.bool_:
        return
    ok = (array == 0) | (array == 1)
    if allowed_extra is not None:
        ok |= array == allowed_extra
    if not bool(ok.all()):
        extra = "" if allowed_extra is None else f" or {allowed_extra} (ignore)"
        raise ValueError(
            f"{name} must be a binary mask (bool or 0/1{extra}); threshold logits or "
            "probabilities before computing IoU, and mark ignore regions in the target with "
            "ignore_index= (ReasonSeg: 255)"
        )


def _valid_masks(pred: Any, target: Any, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Foreground of `pred` and `target` restricted to valid pixels, as bool arrays."""
    pred_np = as_numpy(pred)
    target_np = as_numpy(target)
    if pred_np.shape != target_np.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred_np.shape)} vs {tuple(target_np.shape)}; "
            "resize the prediction to the target size first"
        )
    _check_binary(pred_np, "pred")
    _check_binary(target_np, "target", ignore_index)
    pred_fg = pred_np != 0
    if ignore_index is None:
        return pred_fg, target_np != 0
    valid = target_np != ignore_index
    return pred_fg & valid, (target_np != 0) & valid


def mask_intersection_union(
    pred: Any, target: Any, *, ignore_index: int | None = None
) -> tuple[int, int]:
    """Foreground intersection and union pixel counts of one mask pair.

    Arguments:
      pred: [...] binary mask (bool or 0/1), numpy array or torch tensor.
      target: same shape as `pred`; binary, and may also hold `ignore_index`.
      ignore_index: target value whose pixels are excluded from both counts (LISA forces the
        prediction to this value there, which is the same thing).

    Returns:
      `(I, U)` as Python ints.
    """
    pred_fg, target_fg = _valid_masks(pred, target, ignore_index)
    intersection = int(np.count_nonzero(pred_fg & target_fg))
    union = int(np.count_nonzero(pred_fg | target_fg))
    return intersection, union


def iou_from_counts(intersection: float, union: float, *, empty: float) -> float:
    """`I / U`, or `empty` when `U == 0` (each benchmark defines this case differently)."""
    if union == 0:
        return float(empty)
    return float(intersection) / float(union)


def mask_iou(
    pred: Any, target: Any, *, empty: float = 0.0, ignore_index: int | None = None
) -> float:
    """IoU of one mask pair.

    Arguments:
      pred, target: [...] binary masks of equal shape (see `mask_intersection_union`).
      empty: the value returned when the union is empty (mmdet RES: 0, ReasonSeg: 1).
      ignore_index: target value to exclude.

    Returns:
      The IoU as a Python float.
    """
    intersection, union = mask_intersection_union(pred, target, ignore_index=ignore_index)
    return iou_from_counts(intersection, union, empty=empty)


def pairwise_mask_iou(preds: Any, targets: Any, *, empty: float = 0.0) -> np.ndarray:
    """IoU of every (pred, target) pair.

    Arguments:
      preds: [P, H, W] binary masks.
      targets: [G, H, W] binary masks.
      empty: value for a pair whose union is empty.

    Returns:
      [P, G] float64 array.
    """
    preds_np = as_numpy(preds)
    targets_np = as_numpy(targets)
    if preds_np.ndim != 3 or targets_np.ndim != 3:
        raise ValueError(
            f"pairwise_mask_iou expects [P, H, W] and [G, H, W], got {tuple(preds_np.shape)} and "
            f"{tuple(targets_np.shape)}"
        )
    out = np.zeros((preds_np.shape[0], targets_np.shape[0]), dtype=np.float64)
    for i, pred in enumerate(preds_np):
        for j, target in enumerate(targets_np):
            out[i, j] = mask_iou(pred, target, empty=empty)
    return out


def pixel_accuracy(pred: Any, target: Any, *, ignore_index: int | None = None) -> float:
    """Fraction of valid pixels where the binary prediction equals the binary target.

    Arguments:
      pred, target: [...] binary masks of equal shape; target pixels equal to `ignore_index` are
        excluded.

    Returns:
      Accuracy in [0, 1]; NaN when no pixel is valid.
    """
    pred_fg, target_fg = _valid_masks(pred, target, ignore_index)
    if ignore_index is None:
        valid = np.ones(pred_fg.shape, dtype=bool)
    else:
        valid = as_numpy(target) != ignore_index
    total = int(np.count_nonzero(valid))
    if total == 0:
        return float("nan")
    return int(np.count_nonzero((pred_fg == target_fg) & valid)) / total


# --------------------------------------------------------------------------------------------
# Per-sample records (exact under multi-process evaluation)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskRecord:
    """What one evaluated sample contributes to a mask metric.

    Arguments:
      sample_id: unique id of the sample (dataset index, ref id, image name...), as a string.
      intersection: foreground intersection pixel count I.
      union: foreground union pixel count U.
      meta: extra tags a reduction needs, e.g. PNG's `isthing` and `plural`.
    """

    sample_id: str
    intersection: int
    union: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    def iou(self, *, empty: float) -> float:
        """This sample's IoU, with `empty` for an empty union."""
        return iou_from_counts(self.intersection, self.union, empty=empty)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (picklable and JSON-safe when `meta` is)."""
        return {
            "sample_id": self.sample_id,
            "intersection": self.intersection,
            "union": self.union,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MaskRecord:
        """Inverse of `to_dict`."""
        return cls(
            sample_id=str(data["sample_id"]),
            intersection=int(data["intersection"]),
            union=int(data["union"]),
            meta=dict(data.get("meta", {})),
        )


def _require_records(records: Sequence[MaskRecord], metric: str) -> None:
    if len(records) == 0:
        raise ValueError(f"{metric}: no samples were evaluated (the record list is empty)")
    ids = [record.sample_id for record in records]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"{metric}: duplicate sample ids in the records; score each sample once (the eval "
            "runner shards without repeats) or drop the repeats by sample id first"
        )


# --------------------------------------------------------------------------------------------
# PNG: average recall
# --------------------------------------------------------------------------------------------


def average_recall(ious: Any, *, step: float = 1e-5) -> float:
    """Area under the curve `recall(IoU >= t)` for `t` on the grid `np.arange(0, 1, step)`.

    The PNG reference sums `(t_{i+1} - t_i) * recall(t_i)` over consecutive grid points, so the
    last cell `[t_{K-1}, 1)` is not counted; this keeps that definition (it moves the result by
    at most `step`).

    Arguments:
      ious: [N] per-sample IoUs.
      step: grid spacing (1e-5 in PNG).

    Returns:
      The average recall; NaN when `ious` is empty.
    """
    values = np.sort(as_numpy(ious).astype(np.float64).reshape(-1))
    if values.size == 0:
        return float("nan")
    thresholds = np.arange(0.0, 1.0, step)
    # recall(t) = #(iou >= t) / N, read off the sorted IoUs for the whole grid at once.
    at_least = values.size - np.searchsorted(values, thresholds[:-1], side="left")
    recall = at_least / values.size
    # math.fsum is exactly rounded, so the result does not depend on summation order; np.dot
    # would change in the last bits with the BLAS thread count (1 vs N processes differ).
    return math.fsum((np.diff(thresholds) * recall).tolist())


def png_summary(ious: Any, isthing: Any, plural: Any, *, step: float = 1e-5) -> dict[str, float]:
    """PNG metrics from per-segment IoUs and their tags.

    Arguments:
      ious: [N] per-segment IoUs.
      isthing: [N] bool, the segment is a "thing" (else "stuff").
      plural: [N] bool, the noun phrase is plural (else singular).
      step: average-recall grid spacing.

    Returns:
      `AR`, `AR_singulars`, `AR_plurals`, `AR_things`, `AR_stuff` (NaN for an empty group) and
      `acc_at_0_5` (fraction with IoU > 0.5, strict as in PNG).
    """
    iou_np = as_numpy(ious).astype(np.float64).reshape(-1)
    thing_np = as_numpy(isthing).astype(bool).reshape(-1)
    plural_np = as_numpy(plural).astype(bool).reshape(-1)
    if not (iou_np.shape == thing_np.shape == plural_np.shape):
        raise ValueError(
            f"png_summary: ious, isthing and plural must have one entry per segment, got "
            f"{iou_np.shape}, {thing_np.shape}, {plural_np.shape}"
        )
    accuracy = float(np.count_nonzero(iou_np > 0.5) / iou_np.size) if iou_np.size else float("nan")
    return {
        "AR": average_recall(iou_np, step=step),
        "AR_singulars": average_recall(iou_np[~plural_np], step=step),
        "AR_plurals": average_recall(iou_np[plural_np], step=step),
        "AR_things": average_recall(iou_np[thing_np], step=step),
        "AR_stuff": average_recall(iou_np[~thing_np], step=step),
        "acc_at_0_5": accuracy,
    }


def png_metrics(records: Sequence[MaskRecord], *, step: float = 1e-5) -> dict[str, float]:
    """PNG metrics from records whose `meta` holds `isthing` and `plural`.

    An empty union counts as IoU 0 (the reference gets NaN, which fails every threshold too).
    """
    _require_records(records, "png_metrics")
    missing = [r.sample_id for r in records if "isthing" not in r.meta or "plural" not in r.meta]
    if missing:
        raise ValueError(
            f"png_metrics: records {missing[:5]} lack the 'isthing'/'plural' tags; build them as "
            "MaskRecord(..., meta={'isthing': ..., 'plural': ...})"
        )
    return png_summary(
        [r.iou(empty=0.0) for r in records],
        [bool(r.meta["isthing"]) for r in records],
        [bool(r.meta["plural"]) for r in records],
        step=step,
    )


# --------------------------------------------------------------------------------------------
# RES and ReasonSeg
# --------------------------------------------------------------------------------------------


def refseg_metrics(records: Sequence[MaskRecord]) -> dict[str, float]:
    """mmdet `RefSegMetric`: cIoU = sum I / sum U and mIoU = mean of per-sample I / U, in percent.

    A sample with an empty union counts 0 in mIoU (mmdet's `nan_to_num`); cIoU is NaN when every
    union is empty, as in mmdet.
    """
    _require_records(records, "refseg_metrics")
    cum_i = sum(r.intersection for r in records)
    cum_u = sum(r.union for r in records)
    mean_iou = math.fsum(r.iou(empty=0.0) for r in records) / len(records)
    return {
        "cIoU": 100.0 * cum_i / cum_u if cum_u else float("nan"),
        "mIoU": 100.0 * mean_iou,
    }


def reasonseg_metrics(records: Sequence[MaskRecord]) -> dict[str, float]:
    """LISA's ReasonSeg metrics (fractions, not percent).

    gIoU = mean of per-sample I / U, where an empty target with an empty prediction (empty union)
    counts 1. cIoU = sum I / sum U (0 when every union is empty). Build the records with
    `ignore_index=255` so that ignore regions are excluded.
    """
    _require_records(records, "reasonseg_metrics")
    cum_i = sum(r.intersection for r in records)
    cum_u = sum(r.union for r in records)
    giou = math.fsum(r.iou(empty=1.0) for r in records) / len(records)
    return {"gIoU": giou, "cIoU": cum_i / cum_u if cum_u else 0.0}


__all__ = [
    "EMPTY_TARGET",
    "IGNORE_INDEX",
    "MaskRecord",
    "average_recall",
    "iou_from_counts",
    "mask_intersection_union",
    "mask_iou",
    "pairwise_mask_iou",
    "pixel_accuracy",
    "png_metrics",
    "png_summary",
    "reasonseg_metrics",
    "refseg_metrics",
]
