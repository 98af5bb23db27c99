"""The evaluation benchmarks: which splits each one reads (their files are placed by
`hg_lmm.datasets.layout`), how one sample is scored, and how the scores are reduced. The CLIs and
training-time evaluation share these.

Scoring a sample returns `MaskRecord`s (sample id, I, U, tags) so that every reduction is exact
under multi-process evaluation (see `hg_lmm.evaluation.mask_metrics`). Sample ids are
`<dataset index>/<mask index>`: unique within a dataset, and the same whatever process scored them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hg_lmm.evaluation.mask_metrics import (
    EMPTY_TARGET,
    IGNORE_INDEX,
    MaskRecord,
    mask_intersection_union,
    png_metrics,
)

# RefCOCO-family evaluation splits, in the order the reference reports them:
# name -> (data set, split) (`hg_lmm.datasets.layout.refcoco_dataset`).
REFCOCO_SPLITS: dict[str, tuple[str, str]] = {
    "refcoco_val": ("refcoco", "val"),
    "refcoco_testA": ("refcoco", "testA"),
    "refcoco_testB": ("refcoco", "testB"),
    "refcoco+_val": ("refcoco+", "val"),
    "refcoco+_testA": ("refcoco+", "testA"),
    "refcoco+_testB": ("refcoco+", "testB"),
    "refcocog_val": ("refcocog", "val"),
    "refcocog_test": ("refcocog", "test"),
}

# Captions per decoder pass over an image's shared prompt when no --batch-size is given (CPU):
# batching gains little there, and each pass's features are dropped before the next, so this
# bounds the peak (README "Performance": with all of an image's captions at once, RefCOCO and
# RefCOCO+ together peaked at 1.47x the unshared path, with 2 at 1.01x).
CAPTIONS_PER_PASS = 2

# ReasonSeg: LISA's question suffix that asks for a short object name, which is then grounded.
REASONSEG_SUFFIX = (
    "Based on the image, answer the name of the object that is most relevant to the answer to "
    "the question in just one or two words, and do not answer yes or no"
)


def refcoco_eval_dataset(data_root: str, name: str) -> Any:
    """One RefCOCO-family evaluation split (`REFCOCO_SPLITS` key) below `data_root`, one sample
    per image, untokenized. The other benchmarks' datasets come straight from
    `hg_lmm.datasets.layout` (`png_dataset(root, "val2017")`, `gcg_dataset`, `reasonseg_dataset`).
    """
    from hg_lmm.datasets.layout import refcoco_dataset

    if name not in REFCOCO_SPLITS:
        raise KeyError(f"unknown RefCOCO split {name!r}; expected one of {list(REFCOCO_SPLITS)}")
    return refcoco_dataset(data_root, *REFCOCO_SPLITS[name])


# --------------------------------------------------------------------------------------------
# Scoring one sample
# --------------------------------------------------------------------------------------------


def _predict_masks(
    model: Any, samples: Sequence[Any], *, share: bool = False, batch_size: int | None = None
) -> list[torch.Tensor]:
    """Bool [n, H, W] masks at the original image size for each (tokenized) sample, on CPU.

    share: the samples are of one image, whose frozen work is done once for all
    (`GroundingModel.predict_group`, `batch_size` captions per decoder pass; None:
    `CAPTIONS_PER_PASS`). Else `batch_size` samples per `predict` call (None: all at once).
    """
    if share:
        outs = model.predict_group(list(samples), batch_size=batch_size or CAPTIONS_PER_PASS)
    else:
        step = batch_size or max(len(samples), 1)
        outs = [
            out
            for i in range(0, len(samples), step)
            for out in model(list(samples[i : i + step]), mode="predict")
        ]
    return [out["masks"].cpu() for out in outs]


def image_key(sample: Any) -> Any:
    """What identifies a sample's image: its file, else the image object itself."""
    return getattr(sample, "image_path", None) or id(sample.image)


def _by_image(samples: Sequence[Any]) -> list[list[int]]:
    """Indices of `samples` grouped by image, groups in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(image_key(sample), []).append(i)
    return list(groups.values())


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


def _png_tags(sample: Any) -> list[dict[str, Any]]:
    pixels = int(sample.masks.shape[-2] * sample.masks.shape[-1])
    return [
        {"isthing": bool(t), "plural": bool(p), "pixels": pixels}
        for t, p in zip(sample.isthing, sample.plural)
    ]


def png_records(
    model: Any, key: Any, sample: Any, *, vis: Callable | None = None
) -> list[MaskRecord]:
    """Score one tokenized PNG narrative: one record per grounded utterance, tagged with
    `isthing`, `plural` and `pixels` (the mask's pixel count, for pixel accuracy).

    `vis`, when given, is called as `vis(image, pred, target, labels, title=...)` with the
    sample's [n, H, W] masks (`EvalRunner.vis_writer`); likewise in the other scoring functions.
    """
    return png_batch(model, [key], [sample], vis=[vis])[0]


def png_batch(
    model: Any,
    keys: Sequence[Any],
    samples: Sequence[Any],
    *,
    vis: Sequence[Callable | None] | None = None,
    share: bool = True,
    batch_size: int | None = None,
) -> list[list[MaskRecord]]:
    """`png_records` of several tokenized narratives (`vis`: each sample's overlay writer or
    None). With `share`, narratives of one image share its frozen work
    (`GroundingModel.predict_group`); narratives alone on their image, and all of them without
    `share`, go `batch_size` at a time through `predict` (None: one at a time)."""
    preds: list[torch.Tensor | None] = [None] * len(samples)
    groups = _by_image(samples) if share else [[i] for i in range(len(samples))]
    alone = [g[0] for g in groups if len(g) == 1]
    for group in groups:
        if len(group) > 1:
            masks = _predict_masks(model, [samples[i] for i in group], share=True,
                                   batch_size=batch_size)  # fmt: skip
            for i, m in zip(group, masks):
                preds[i] = m
    masks = _predict_masks(model, [samples[i] for i in alone], batch_size=batch_size or 1)
    for i, m in zip(alone, masks):
        preds[i] = m
    _draw(samples, preds, vis)
    return [_records(k, p, s.masks, _png_tags(s)) for k, s, p in zip(keys, samples, preds)]


def refseg_records(
    model: Any,
    key: Any,
    sample: Any,
    *,
    tokenize: Callable,
    concat: bool,
    vis: Callable | None = None,
    share: bool = True,
    batch_size: int | None = None,
) -> list[MaskRecord]:
    """Score one RefCOCO image (an untokenized `GroundingSample`): one record per expression.

    With `concat`, all expressions of the image form one caption and run in one forward (how the
    model trains). Without it, each expression runs as the only phrase of its caption (the
    reference's default). Records are per expression either way, so cIoU and mIoU are
    comparable between the two modes. With `share` (the default), the image's frozen work
    (vision tower, prompt, SAM's image encoder) is done once for its expressions, whose
    captions run over the prompt's KV cache, `batch_size` per pass (None: `CAPTIONS_PER_PASS`);
    without it, every expression runs the whole model (`batch_size` per forward; None: all of
    the image's in one).
    """
    return refseg_batch(
        model, [key], [sample], tokenize=tokenize, concat=concat, vis=[vis],
        share=share, batch_size=batch_size,
    )[0]  # fmt: skip


def refseg_batch(
    model: Any,
    keys: Sequence[Any],
    samples: Sequence[Any],
    *,
    tokenize: Callable,
    concat: bool,
    vis: Sequence[Callable | None] | None = None,
    share: bool = True,
    batch_size: int | None = None,
) -> list[list[MaskRecord]]:
    """`refseg_records` of several RefCOCO samples (`vis`: each sample's overlay writer or
    None). With `share`, the samples of one image (e.g. the same image in RefCOCO and
    RefCOCO+, evaluated together) share its frozen work: all their captions run over one prompt
    KV cache."""
    inputs = [_refseg_inputs(sample, tokenize, concat) for sample in samples]
    preds: list[list[torch.Tensor]] = [[] for _ in samples]
    groups = _by_image(samples) if share else [[i] for i in range(len(samples))]
    for group in groups:
        flat = [x for i in group for x in inputs[i]]
        masks = _predict_masks(model, flat, share=share, batch_size=batch_size) if flat else []
        for i in group:
            preds[i], masks = masks[: len(inputs[i])], masks[len(inputs[i]) :]
    joined = [torch.cat(p) if p else s.masks[:0] for s, p in zip(samples, preds)]
    _draw(samples, joined, vis)
    return [_records(k, p, s.masks) for k, s, p in zip(keys, samples, joined)]


def _draw(samples: Sequence[Any], preds: Sequence[Any], vis: Sequence[Any] | None) -> None:
    """Each sample's prediction-vs-ground-truth overlay, where its writer is not None."""
    for sample, pred, writer in zip(samples, preds, vis or [None] * len(samples)):
        if writer is not None:
            writer(sample.image, pred, sample.masks, sample.phrases, title=sample.source)


def _refseg_inputs(sample: Any, tokenize: Callable, concat: bool) -> list[Any]:
    """The tokenized samples of a RefCOCO image: one (concat), or one per expression, each the
    only phrase of its caption (mask 0)."""
    if concat:
        return [tokenize(sample)]
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
    return singles


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
    "CAPTIONS_PER_PASS",
    "REASONSEG_SUFFIX",
    "REFCOCO_SPLITS",
    "image_key",
    "png_batch",
    "png_pixel_accuracy",
    "png_records",
    "png_report",
    "reasonseg_question",
    "reasonseg_record",
    "refcoco_eval_dataset",
    "refseg_batch",
    "refseg_records",
]
