"""GCG metrics of GLaMM's GranD-f evaluation: masks matched to phrases, mask AP50, captions.

- mIoU: per image, predicted and ground-truth masks are paired greedily one to one (largest IoU
  first, while it is > 0); the image scores the mean IoU of its pairs, and mIoU is the mean over
  images.
- recall: a ground-truth phrase counts when it is paired with IoU >= 0.5 *and* a text similarity
  (mean-pooled BERT states, cosine) >= 0.5.
- AP50: mask AP at IoU 0.5 by pycocotools COCOeval (segm, one category).
- METEOR and CIDEr: pycocoevalcap, as COCOEvalCap runs them (needs Java).

The mask IoUs come from `hg_lmm.evaluation.mask_metrics`; masks are COCO RLE (`hg_lmm.utils.rle`).
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hg_lmm.evaluation.mask_metrics import pairwise_mask_iou
from hg_lmm.utils.arrays import as_numpy
from hg_lmm.utils.rle import RLE, rle_area, rle_bbox, rle_to_mask

TextSimilarity = Callable[[str, str], float]


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
    pred_np = as_numpy(pred_masks)
    gt_np = as_numpy(gt_masks)
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
    gt_np = as_numpy(gt_masks)
    pred_np = as_numpy(pred_masks)
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
    "BertTextSimilarity",
    "GcgSample",
    "TextSimilarity",
    "bert_text_similarity",
    "caption_metrics",
    "gcg_image_miou",
    "gcg_image_recall_matches",
    "gcg_metrics",
    "mask_ap50",
]
