"""Evaluation metrics for PNG, referring segmentation (RES), ReasonSeg and GCG.

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
- GCG (GLaMM's GranD-f evaluation): per-image mIoU with greedy one-to-one matching, recall with
  IoU >= 0.5 *and* text similarity >= 0.5, mask AP50 by COCOeval (segm, one category), METEOR and
  CIDEr by pycocoevalcap.

Multi-process evaluation stays exact because each rank only produces per-sample records
(`MaskRecord`: id, I, U, tags), the records are all-gathered and de-duplicated by sample id, and
every reduction is order-independent (integer sums, `math.fsum`, counts). One process and N
processes therefore give bit-identical numbers, whatever order the samples arrive in.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from hg_lmm.evaluation.rle import RLE, rle_area, rle_bbox, rle_to_mask

logger = logging.getLogger(__name__)

T = TypeVar("T")
TextSimilarity = Callable[[str, str], float]

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


def _as_numpy(array: Any) -> np.ndarray:
    """Numpy view of a numpy array or torch tensor (moved to CPU); torch is not imported here."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


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
    pred_np = _as_numpy(pred)
    target_np = _as_numpy(target)
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
    preds_np = _as_numpy(preds)
    targets_np = _as_numpy(targets)
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
        valid = _as_numpy(target) != ignore_index
    total = int(np.count_nonzero(valid))
    if total == 0:
        return float("nan")
    return int(np.count_nonzero((pred_fg == target_fg) & valid)) / total


# --------------------------------------------------------------------------------------------
# Per-sample records and the accumulator (exact under multi-process evaluation)
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


def all_gather_objects(local: Sequence[T]) -> list[T]:
    """Concatenate every rank's picklable items, in rank order.

    Without an initialised `torch.distributed` process group (or with one rank) this returns
    `list(local)`, so single-process code needs no special case.
    """
    import torch.distributed as dist  # local: keeps this module import-light

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(local)
    gathered: list[list[T] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(local))
    return [item for part in gathered for item in (part or [])]


class MaskIoUAccumulator:
    """Collects one `MaskRecord` per sample; de-duplicates by sample id.

    Duplicates appear when a distributed sampler pads the last batch with repeated samples. The
    first record of an id is kept (ranks are merged in rank order); a disagreeing duplicate is
    logged, because it means inference was not deterministic.
    """

    def __init__(self) -> None:
        self._records: dict[str, MaskRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def add(
        self,
        sample_id: Any,
        pred: Any,
        target: Any,
        *,
        ignore_index: int | None = None,
        **meta: Any,
    ) -> MaskRecord:
        """Score one binary prediction against its target and store the record.

        Arguments:
          sample_id: unique id of the sample; converted with `str`.
          pred, target: [H, W] binary masks (target may hold `ignore_index`).
          ignore_index: target value to exclude (ReasonSeg: 255).
          **meta: tags stored with the record (PNG: `isthing=`, `plural=`).

        Returns:
          The stored record (the earlier one if this id was already present).
        """
        intersection, union = mask_intersection_union(pred, target, ignore_index=ignore_index)
        record = MaskRecord(str(sample_id), intersection, union, dict(meta))
        self.add_record(record)
        return self._records[record.sample_id]

    def add_record(self, record: MaskRecord) -> bool:
        """Store a record; returns False (and keeps the first one) for a repeated sample id."""
        previous = self._records.get(record.sample_id)
        if previous is None:
            self._records[record.sample_id] = record
            return True
        if previous != record:
            logger.warning(
                "sample %r was scored twice with different results (%s vs %s); keeping the first",
                record.sample_id,
                previous,
                record,
            )
        return False

    def state(self) -> list[dict[str, Any]]:
        """This process's records as plain dicts, ready for `all_gather_object` or JSON."""
        return [record.to_dict() for record in self._records.values()]

    def load_state(self, state: Iterable[Mapping[str, Any]]) -> None:
        """Merge records produced by `state()` (of this or another process)."""
        for item in state:
            self.add_record(MaskRecord.from_dict(item))

    def gather(self) -> MaskIoUAccumulator:
        """A new accumulator holding every rank's records (this one when not distributed)."""
        merged = MaskIoUAccumulator()
        merged.load_state(all_gather_objects(self.state()))
        return merged

    def records(self) -> list[MaskRecord]:
        """All records, sorted by sample id."""
        return [self._records[key] for key in sorted(self._records)]


def _require_records(records: Sequence[MaskRecord], metric: str) -> None:
    if len(records) == 0:
        raise ValueError(f"{metric}: no samples were evaluated (the record list is empty)")
    ids = [record.sample_id for record in records]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"{metric}: duplicate sample ids in the records; merge them through "
            "MaskIoUAccumulator, which de-duplicates"
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
    values = np.sort(_as_numpy(ious).astype(np.float64).reshape(-1))
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
    iou_np = _as_numpy(ious).astype(np.float64).reshape(-1)
    thing_np = _as_numpy(isthing).astype(bool).reshape(-1)
    plural_np = _as_numpy(plural).astype(bool).reshape(-1)
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
            f"png_metrics: records {missing[:5]} lack the 'isthing'/'plural' tags; pass them to "
            "MaskIoUAccumulator.add(..., isthing=..., plural=...)"
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


# --------------------------------------------------------------------------------------------
# GCG
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcgSample:
    """One image of grounded conversation generation: a caption and its grounded phrases.

    The same record holds a ground truth (GranD-f `*_gcg_coco_caption_gt.json` caption and
    `labels`, with the masks of `*_gcg_coco_mask_gt.json`) or a prediction.

    Arguments:
      image_id: the GranD-f image id.
      caption: the full caption.
      phrases: the grounded phrases; `phrases[k]` is grounded by `masks[k]`.
      masks: COCO RLE masks (counts as str or uncompressed list), one per phrase.
    """

    image_id: Any
    caption: str
    phrases: tuple[str, ...] = ()
    masks: tuple[RLE, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "phrases", tuple(self.phrases))
        object.__setattr__(self, "masks", tuple(self.masks))


def _decode_stack(rles: Sequence[RLE]) -> np.ndarray:
    """[N, H, W] bool stack of RLEs ([0, 0, 0] when there are none)."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    return np.stack([rle_to_mask(rle) for rle in rles])


def _greedy_pairs(
    matrix: np.ndarray, accept: Callable[[int, int, float], bool]
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching on a score matrix.

    Repeatedly take the largest remaining entry (the first one in row-major order on ties, as
    `np.argmax` does in the reference) and stop at the first one that `accept` rejects; a taken
    entry removes its row and its column.
    """
    scores = np.array(matrix, dtype=np.float64, copy=True)
    pairs: list[tuple[int, int, float]] = []
    while scores.size and np.isfinite(scores).any():
        row, col = np.unravel_index(int(np.argmax(scores)), scores.shape)
        value = float(scores[row, col])
        if not accept(int(row), int(col), value):
            break
        pairs.append((int(row), int(col), value))
        # Removing with -inf keeps the row-major order of the remaining entries, so ties resolve
        # exactly as if the row and column had been deleted.
        scores[row, :] = -np.inf
        scores[:, col] = -np.inf
    return pairs


def gcg_image_miou(pred_masks: Any, gt_masks: Any) -> float:
    """GCG mIoU of one image: greedy one-to-one matching of predicted and ground-truth masks.

    The IoU matrix is [P, G] (predictions are rows). The largest remaining IoU is paired, its row
    and column are removed, and this repeats while the largest remaining IoU is > 0. The image's
    score is the mean IoU of the pairs; unmatched masks are not penalised, and an image without
    any positive-IoU pair scores 0.

    Arguments:
      pred_masks: [P, H, W] binary masks (P may be 0).
      gt_masks: [G, H, W] binary masks.

    Returns:
      The image's mIoU.
    """
    pred_np = _as_numpy(pred_masks)
    gt_np = _as_numpy(gt_masks)
    if pred_np.shape[0] == 0 or gt_np.shape[0] == 0:
        return 0.0
    ious = pairwise_mask_iou(pred_np, gt_np, empty=0.0)
    pairs = _greedy_pairs(ious, lambda _r, _c, value: value > 0.0)
    return math.fsum(value for _, _, value in pairs) / len(pairs) if pairs else 0.0


def gcg_image_recall_matches(
    gt_masks: Any,
    gt_phrases: Sequence[str],
    pred_masks: Any,
    pred_phrases: Sequence[str],
    text_similarity: TextSimilarity,
    *,
    iou_threshold: float = 0.5,
    text_threshold: float = 0.5,
) -> int:
    """Number of ground-truth phrases of one image recalled by the prediction.

    The IoU matrix is [G, P] (ground truths are rows). The largest remaining IoU pair is taken;
    matching stops at the first such pair whose IoU < `iou_threshold` or whose text similarity
    < `text_threshold` (GLaMM stops there rather than trying the next pair). A taken pair
    removes its row and column. Text similarity is only computed for the pairs examined, which
    gives the same result as GLaMM's full matrix.

    Arguments:
      gt_masks: [G, H, W] binary masks; gt_phrases: G phrases.
      pred_masks: [P, H, W] binary masks; pred_phrases: P phrases.
      text_similarity: `f(gt_phrase, pred_phrase) -> similarity`.

    Returns:
      The number of matched pairs.
    """
    gt_np = _as_numpy(gt_masks)
    pred_np = _as_numpy(pred_masks)
    if gt_np.shape[0] != len(gt_phrases) or pred_np.shape[0] != len(pred_phrases):
        raise ValueError(
            f"GCG recall needs one mask per phrase: {gt_np.shape[0]} gt masks for "
            f"{len(gt_phrases)} gt phrases, {pred_np.shape[0]} predicted masks for "
            f"{len(pred_phrases)} predicted phrases"
        )
    if gt_np.shape[0] == 0 or pred_np.shape[0] == 0:
        return 0
    ious = pairwise_mask_iou(gt_np, pred_np, empty=0.0)

    def accept(row: int, col: int, value: float) -> bool:
        if value < iou_threshold:
            return False
        return float(text_similarity(gt_phrases[row], pred_phrases[col])) >= text_threshold

    return len(_greedy_pairs(ious, accept))


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence pycocotools' progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def mask_ap50(
    gt_masks: Mapping[Any, Sequence[RLE]],
    pred_masks: Mapping[Any, Sequence[RLE]],
    pred_scores: Mapping[Any, Sequence[float]] | None = None,
) -> float:
    """Mask AP at IoU 0.5 by pycocotools COCOeval (`segm`, a single category).

    Arguments:
      gt_masks: image id -> ground-truth RLEs.
      pred_masks: image id -> predicted RLEs; every id must be a ground-truth image.
      pred_scores: image id -> one score per predicted mask (default 1.0, as GLaMM saves).

    Returns:
      COCOeval's AP50 (`stats[1]`); 0.0 when there is no prediction at all; -1.0 (COCO's
      convention) when there is no ground-truth mask.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    unknown = [key for key in pred_masks if key not in gt_masks]
    if unknown:
        raise ValueError(f"mask_ap50: predictions for images without ground truth: {unknown[:5]}")
    # COCO wants integer image ids and treats annotation id 0 as "unmatched", so number from 1.
    image_index = {key: index + 1 for index, key in enumerate(gt_masks)}
    images, gt_anns, dt_anns = [], [], []
    for key, number in image_index.items():
        sized = list(gt_masks[key]) + list(pred_masks.get(key, ()))
        if not sized:
            continue  # no mask at all: the image contributes nothing
        height, width = (int(s) for s in sized[0]["size"])
        images.append({"id": number, "height": height, "width": width})
        for rle in gt_masks[key]:
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": number,
                    "category_id": 1,
                    "segmentation": dict(rle),
                    "area": float(rle_area(rle)),
                    "bbox": rle_bbox(rle),
                    "iscrowd": 0,
                }
            )
        scores = None if pred_scores is None else list(pred_scores.get(key, ()))
        for k, rle in enumerate(pred_masks.get(key, ())):
            dt_anns.append(
                {
                    "image_id": number,
                    "category_id": 1,
                    "segmentation": dict(rle),
                    "score": 1.0 if scores is None else float(scores[k]),
                }
            )
    if not gt_anns:
        return -1.0
    if not dt_anns:
        return 0.0
    with _quiet():
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": gt_anns,
            "categories": [{"id": 1, "name": "object"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_anns)
        evaluator = COCOeval(coco_gt, coco_dt, "segm")
        evaluator.params.catIds = [1]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[1])


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "METEOR and CIDEr need Java: pycocoevalcap runs the Stanford PTB tokenizer and "
            "meteor-1.5.jar with `java`, which is not on PATH. Install a Java runtime (e.g. "
            "`apt-get install default-jre-headless`) or skip caption metrics "
            "(gcg_metrics(..., compute_captions=False))."
        )


def caption_metrics(
    references: Mapping[Any, Sequence[str]], candidates: Mapping[Any, str]
) -> dict[str, float]:
    """METEOR and CIDEr of generated captions, by pycocoevalcap (as COCOEvalCap runs them).

    Both sides are tokenised with pycocoevalcap's PTB tokenizer first. Needs `java` on PATH.

    Arguments:
      references: image id -> reference captions (GranD-f has one per image).
      candidates: image id -> the generated caption; same ids as `references`.

    Returns:
      `{"METEOR": corpus METEOR, "CIDEr": mean CIDEr-D}`.
    """
    if set(references) != set(candidates):
        missing = [key for key in references if key not in candidates]
        extra = [key for key in candidates if key not in references]
        raise ValueError(
            f"caption_metrics: ids differ (missing candidates {missing[:5]}, "
            f"unknown candidates {extra[:5]})"
        )
    if not references:
        raise ValueError("caption_metrics: no captions to score")
    _require_java()
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The tokenizer joins captions with newlines, so a newline inside a caption would shift
    # every later caption; flatten them first.
    def clean(text: str) -> str:
        return " ".join(text.splitlines())

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize(
        {k: [{"caption": clean(c)} for c in references[k]] for k in references}
    )
    res = tokenizer.tokenize({k: [{"caption": clean(candidates[k])}] for k in references})
    cider, _ = Cider().compute_score(gts, res)
    meteor_scorer = Meteor()
    try:
        meteor, _ = meteor_scorer.compute_score(gts, res)
    finally:
        _close_meteor(meteor_scorer)
    return {"METEOR": float(meteor), "CIDEr": float(cider)}


def _close_meteor(scorer: Any) -> None:
    """Stop the METEOR Java process now; its `__del__` deadlocks if an error left its lock held."""
    if scorer.lock.locked():
        scorer.lock.release()
    process = scorer.meteor_p
    with contextlib.suppress(Exception):
        process.stdin.close()
    process.kill()
    process.wait()
    for stream in (process.stdout, process.stderr):
        with contextlib.suppress(Exception):
            stream.close()


class BertTextSimilarity:
    """Cosine similarity of mean-pooled BERT last hidden states (GLaMM's GCG text similarity).

    The model is loaded on the first call, never at construction or import. Embeddings are
    cached per string because the same phrases are compared many times.

    Arguments:
      model_path: Hugging Face id or local folder of a BERT model.
      device: torch device for the encoder.
      max_length: tokenizer truncation length.
    """

    def __init__(
        self, model_path: str = "bert-base-uncased", *, device: str = "cpu", max_length: int = 512
    ) -> None:
        self.model_path = model_path
        self.device = device
        self.max_length = max_length
        self._tokenizer: Any = None
        self._model: Any = None
        self._cache: dict[str, np.ndarray] = {}

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self._model = AutoModel.from_pretrained(self.model_path).to(self.device).eval()
        except OSError as error:
            raise OSError(
                f"could not load the BERT text-similarity model {self.model_path!r}; download "
                "`bert-base-uncased` (e.g. `huggingface-cli download bert-base-uncased`) or pass "
                "model_path= a local copy"
            ) from error

    def embed(self, text: str) -> np.ndarray:
        """[D] float64 mean of the last hidden states over all tokens ([CLS] and [SEP] included)."""
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        if self._model is None:
            self._load()
        import torch

        inputs = self._tokenizer(
            text, return_tensors="pt", max_length=self.max_length, truncation=True
        ).to(self.device)
        with torch.no_grad():
            hidden = self._model(**inputs).last_hidden_state[0]
        embedding = hidden.mean(dim=0).float().cpu().numpy().astype(np.float64)
        self._cache[text] = embedding
        return embedding

    def __call__(self, first: str, second: str) -> float:
        a, b = self.embed(first), self.embed(second)
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float(np.dot(a, b) / norm) if norm > 0 else 0.0


def bert_text_similarity(model_path: str = "bert-base-uncased") -> BertTextSimilarity:
    """The default GCG text similarity: a lazily loaded `BertTextSimilarity(model_path)`."""
    return BertTextSimilarity(model_path)


def _by_image(samples: Sequence[GcgSample], what: str) -> dict[Any, GcgSample]:
    out: dict[Any, GcgSample] = {}
    for sample in samples:
        if sample.image_id in out:
            if what == "ground truth":
                raise ValueError(f"GCG ground truth lists image {sample.image_id!r} twice")
            continue  # a repeat from distributed padding: keep the first
        out[sample.image_id] = sample
    return out


def gcg_metrics(
    ground_truth: Sequence[GcgSample],
    predictions: Sequence[GcgSample],
    *,
    text_similarity: TextSimilarity | None = None,
    compute_captions: bool = True,
    iou_threshold: float = 0.5,
    text_threshold: float = 0.5,
) -> dict[str, float]:
    """All GCG metrics of GLaMM's GranD-f evaluation.

    Arguments:
      ground_truth: one `GcgSample` per evaluation image.
      predictions: one `GcgSample` per image (gathered from every rank; repeats are dropped).
        Every ground-truth image needs a prediction.
      text_similarity: phrase similarity for recall; default `bert_text_similarity()`.
      compute_captions: compute METEOR and CIDEr (needs Java).
      iou_threshold, text_threshold: the recall thresholds (0.5 and 0.5 in GLaMM).

    Returns:
      `mIoU` (mean over images of `gcg_image_miou`), `recall` (matched / ground-truth phrases),
      `AP50`, and with captions `METEOR` and `CIDEr`.
    """
    gts = _by_image(ground_truth, "ground truth")
    preds = _by_image(predictions, "prediction")
    missing = [key for key in gts if key not in preds]
    extra = [key for key in preds if key not in gts]
    if missing or extra:
        raise ValueError(
            f"GCG predictions do not cover the ground truth: {len(missing)} images without a "
            f"prediction (e.g. {missing[:5]}), {len(extra)} unknown images (e.g. {extra[:5]})"
        )
    if not gts:
        raise ValueError("gcg_metrics: the ground truth is empty")
    similarity = text_similarity if text_similarity is not None else bert_text_similarity()

    mious: list[float] = []
    matched = 0
    positives = 0
    for key, gt in gts.items():
        pred = preds[key]
        gt_stack = _decode_stack(gt.masks)
        pred_stack = _decode_stack(pred.masks)
        mious.append(gcg_image_miou(pred_stack, gt_stack))
        positives += len(gt.phrases)
        matched += gcg_image_recall_matches(
            gt_stack,
            gt.phrases,
            pred_stack,
            pred.phrases,
            similarity,
            iou_threshold=iou_threshold,
            text_threshold=text_threshold,
        )
    result = {
        "mIoU": math.fsum(mious) / len(mious),
        "recall": matched / positives if positives else 0.0,
        "AP50": mask_ap50(
            {key: gt.masks for key, gt in gts.items()},
            {key: preds[key].masks for key in gts},
        ),
    }
    if compute_captions:
        result.update(
            caption_metrics(
                {key: [gt.caption] for key, gt in gts.items()},
                {key: preds[key].caption for key in gts},
            )
        )
    return result


__all__ = [
    "EMPTY_TARGET",
    "IGNORE_INDEX",
    "BertTextSimilarity",
    "GcgSample",
    "MaskIoUAccumulator",
    "MaskRecord",
    "TextSimilarity",
    "all_gather_objects",
    "average_recall",
    "bert_text_similarity",
    "caption_metrics",
    "gcg_image_miou",
    "gcg_image_recall_matches",
    "gcg_metrics",
    "iou_from_counts",
    "mask_ap50",
    "mask_intersection_union",
    "mask_iou",
    "pairwise_mask_iou",
    "pixel_accuracy",
    "png_metrics",
    "png_summary",
    "reasonseg_metrics",
    "refseg_metrics",
]
