"""The evaluation benchmarks: which datasets each one reads below a data root, how one sample is
scored, and how the scores are reduced. The CLIs and training-time evaluation share these.

Scoring a sample returns `MaskRecord`s (sample id, I, U, tags) so that every reduction is exact
under multi-process evaluation (see `hg_lmm.evaluation.metrics`). Sample ids are
`<dataset index>/<mask index>`: unique within a dataset, and the same whatever process scored them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hg_lmm.evaluation.metrics import (
    EMPTY_TARGET,
    IGNORE_INDEX,
    MaskRecord,
    mask_intersection_union,
    png_metrics,
)

# RefCOCO-family evaluation splits, in the order the reference reports them:
# name -> (folder below <data-root>/coco, refs file, split).
REFCOCO_SPLITS: dict[str, tuple[str, str, str]] = {
    "refcoco_val": ("refcoco", "refs(unc).p", "val"),
    "refcoco_testA": ("refcoco", "refs(unc).p", "testA"),
    "refcoco_testB": ("refcoco", "refs(unc).p", "testB"),
    "refcoco+_val": ("refcoco+", "refs(unc).p", "val"),
    "refcoco+_testA": ("refcoco+", "refs(unc).p", "testA"),
    "refcoco+_testB": ("refcoco+", "refs(unc).p", "testB"),
    "refcocog_val": ("refcocog", "refs(umd).p", "val"),
    "refcocog_test": ("refcocog", "refs(umd).p", "test"),
}

# ReasonSeg: LISA's question suffix that asks for a short object name, which is then grounded.
REASONSEG_SUFFIX = (
    "Based on the image, answer the name of the object that is most relevant to the answer to "
    "the question in just one or two words, and do not answer yes or no"
)


# --------------------------------------------------------------------------------------------
# Datasets below a data root (data/README.md layout; data/toy mirrors it)
# --------------------------------------------------------------------------------------------


def png_val_dataset(data_root: str, transform: Callable | None = None) -> Any:
    """PNG val2017 narratives below `data_root` (`coco/annotations/png_coco_val2017.json`...)."""
    from hg_lmm.datasets import PNGDataset

    ann = os.path.join(data_root, "coco", "annotations")
    return PNGDataset(
        json_file=os.path.join(ann, "png_coco_val2017.json"),
        panoptic_json_file=os.path.join(ann, "panoptic_val2017.json"),
        panoptic_png_dir=os.path.join(ann, "panoptic_val2017"),
        image_dir=os.path.join(data_root, "coco", "val2017"),
        transform=transform,
    )


def refcoco_dataset(data_root: str, name: str) -> Any:
    """One RefCOCO-family split (`REFCOCO_SPLITS` key), one sample per image, untokenized."""
    from hg_lmm.datasets import RefCocoDataset

    if name not in REFCOCO_SPLITS:
        raise KeyError(f"unknown RefCOCO split {name!r}; expected one of {list(REFCOCO_SPLITS)}")
    folder, refs, split = REFCOCO_SPLITS[name]
    return RefCocoDataset(
        data_root=os.path.join(data_root, "coco") + os.sep,
        ann_file=f"{folder}/instances.json",
        split_file=f"{folder}/{refs}",
        image_dir="train2014/",
        split=split,
    )


def gcg_dataset(data_root: str, split: str) -> Any:
    """GranD-f GCG `split` ("val" or "test") ground truth below `data_root`."""
    from hg_lmm.datasets import GranDfGCGDataset

    if split not in ("val", "test"):
        raise ValueError(f"GCG split must be 'val' or 'test', got {split!r}")
    ann = os.path.join(data_root, "GCG", "GranDf", "annotations", "val_test")
    return GranDfGCGDataset(
        caption_json=os.path.join(ann, f"{split}_gcg_coco_caption_gt.json"),
        mask_json=os.path.join(ann, f"{split}_gcg_coco_mask_gt.json"),
        image_dir=os.path.join(data_root, "GCG", "GranDf_HA_images", "val_test"),
    )


def reasonseg_dataset(data_root: str, split: str) -> Any:
    """LISA's ReasonSeg `split` folder below `data_root` (`reason_seg/ReasonSeg/<split>`)."""
    from hg_lmm.datasets import ReasonSegDataset

    return ReasonSegDataset(root=os.path.join(data_root, "reason_seg", "ReasonSeg", split))


# --------------------------------------------------------------------------------------------
# Scoring one sample
# --------------------------------------------------------------------------------------------


def _predict_masks(model: Any, samples: Sequence[Any]) -> list[torch.Tensor]:
    """Bool [n, H, W] masks at the original image size for each (tokenized) sample, on CPU."""
    return [out["masks"].cpu() for out in model(list(samples), mode="predict")]


def _records(
    key: Any, pred: torch.Tensor, gt: torch.Tensor, meta: Sequence[dict[str, Any]] | None = None
) -> list[MaskRecord]:
    if pred.shape != gt.shape:
        raise ValueError(
            f"sample {key}: predicted masks {tuple(pred.shape)} vs ground truth {tuple(gt.shape)}; "
            "the model must return one mask per phrase at the original image size"
        )
    out = []
    for k in range(gt.shape[0]):
        intersection, union = mask_intersection_union(pred[k], gt[k])
        tags = dict(meta[k]) if meta else {}
        if not bool(gt[k].any()):
            tags[EMPTY_TARGET] = True
        out.append(MaskRecord(f"{key}/{k}", intersection, union, tags))
    return out


def png_records(
    model: Any, key: Any, sample: Any, *, vis: Callable | None = None
) -> list[MaskRecord]:
    """Score one tokenized PNG narrative: one record per grounded utterance, tagged with
    `isthing`, `plural` and `pixels` (the mask's pixel count, for pixel accuracy).

    `vis`, when given, is called as `vis(image, pred, target, labels, title=...)` with the
    sample's [n, H, W] masks (`EvalRunner.vis_writer`); likewise in the other scoring functions.
    """
    (pred,) = _predict_masks(model, [sample])
    if vis is not None:
        vis(sample.image, pred, sample.masks, sample.phrases, title=sample.source)
    pixels = int(sample.masks.shape[-2] * sample.masks.shape[-1])
    meta = [
        {"isthing": bool(t), "plural": bool(p), "pixels": pixels}
        for t, p in zip(sample.isthing, sample.plural)
    ]
    return _records(key, pred, sample.masks, meta)


def refseg_records(
    model: Any,
    key: Any,
    sample: Any,
    *,
    tokenize: Callable,
    concat: bool,
    vis: Callable | None = None,
) -> list[MaskRecord]:
    """Score one RefCOCO image (an untokenized `GroundingSample`): one record per expression.

    With `concat`, all expressions of the image form one caption and run in one forward (how the
    model trains). Without it, each expression runs in its own forward as the only phrase of the
    caption (the reference's default). Records are per expression either way, so cIoU and mIoU
    are comparable between the two modes.
    """
    if concat:
        (pred,) = _predict_masks(model, [tokenize(sample)])
    else:
        pred = _predict_singles(model, sample, tokenize)
    if vis is not None:
        vis(sample.image, pred, sample.masks, sample.phrases, title=sample.source)
    return _records(key, pred, sample.masks)


def _predict_singles(model: Any, sample: Any, tokenize: Callable) -> torch.Tensor:
    """[n, H, W] masks of a RefCOCO image, each expression in its own forward pass."""
    singles = []
    for k, phrase in enumerate(sample.phrases):
        piece = dataclasses.replace(_piece_of(sample, k), mask_id=0)
        singles.append(
            tokenize(
                dataclasses.replace(
                    sample,
                    pieces=[piece],
                    masks=sample.masks[k : k + 1],
                    plural=[sample.plural[k]],
                    isthing=[sample.isthing[k]],
                    source=f"{sample.source}, expression {k} {phrase!r}",
                )
            )
        )
    return torch.cat(_predict_masks(model, singles)) if singles else sample.masks[:0]


def _piece_of(sample: Any, mask_id: int) -> Any:
    for piece in sample.pieces:
        if piece.mask_id == mask_id:
            return piece
    raise ValueError(f"{sample.source}: no caption piece for mask {mask_id}")


def reasonseg_question(question: str) -> str:
    """The question as asked: LISA's question plus the short-answer instruction."""
    return f"{question.strip().rstrip('?')}? {REASONSEG_SUFFIX}"


def reasonseg_record(
    model: Any,
    key: Any,
    sample: Any,
    *,
    max_new_tokens: int,
    threshold: float,
    vis: Callable | None = None,
) -> MaskRecord:
    """Answer the first question of one ReasonSeg image, ground the whole answer, score it
    against the target with the ignore region left out."""
    from hg_lmm.evaluation.grounding import answer_and_ground_all

    grounded = answer_and_ground_all(
        model,
        sample.image,
        reasonseg_question(sample.questions[0]),
        max_new_tokens=max_new_tokens,
        threshold=threshold,
    )
    pred = grounded.masks[0]
    target = sample.label_map
    if pred.shape != target.shape:
        raise ValueError(
            f"{sample.image_path}: predicted mask {tuple(pred.shape)} vs target "
            f"{tuple(target.shape)}"
        )
    if vis is not None:
        answer = grounded.text or "(empty answer)"
        vis(sample.image, pred[None], sample.target[None], [answer], title=sample.questions[0])
    intersection, union = mask_intersection_union(pred, target, ignore_index=IGNORE_INDEX)
    tags: dict[str, Any] = {"answer": grounded.text}
    if not bool((target == 1).any()):
        tags[EMPTY_TARGET] = True
    return MaskRecord(str(key), intersection, union, tags)


# --------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------


def png_pixel_accuracy(records: Sequence[MaskRecord]) -> float:
    """Pixel accuracy over every scored mask: correct pixels / all pixels.

    For binary masks the wrong pixels are exactly `U - I`, so each record's `pixels` tag is all
    it takes; integer sums keep this exact under any sharding.
    """
    total = sum(int(r.meta["pixels"]) for r in records)
    wrong = sum(r.union - r.intersection for r in records)
    return (total - wrong) / total if total else math.nan


def png_report(records: Sequence[MaskRecord]) -> dict[str, float]:
    """PNG average recall (overall, things, stuff, singulars, plurals), accuracy at IoU 0.5
    (`acc_at_0_5`) and pixel accuracy (`pixel_acc`)."""
    return {**png_metrics(records), "pixel_acc": png_pixel_accuracy(records)}


__all__ = [
    "REASONSEG_SUFFIX",
    "REFCOCO_SPLITS",
    "gcg_dataset",
    "png_pixel_accuracy",
    "png_records",
    "png_report",
    "png_val_dataset",
    "reasonseg_dataset",
    "reasonseg_question",
    "reasonseg_record",
    "refcoco_dataset",
    "refseg_records",
]
