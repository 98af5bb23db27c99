"""Grounded conversation generation (GranD-f): prediction files and their evaluation inputs.

Inference writes one JSON per image, `<prediction dir>/<image_id>.json`, in GLaMM's format
`{"image_id", "caption", "phrases", "pred_masks": [COCO RLE, ...]}`, atomically (a file exists only
once it is complete). A restarted inference therefore skips every image whose file exists and
redoes the rest. `run.json` in the same folder records what produced the predictions, so that a
restart with another config or checkpoint cannot silently mix two models' outputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hg_lmm.evaluation.metrics import GcgSample
from hg_lmm.evaluation.rle import masks_to_rles, write_json_atomic

logger = logging.getLogger(__name__)

GCG_INSTRUCTION = "Please give me a detailed description of the image."
# Shared default of gcg_infer.py (writes) and gcg_evaluate.py (reads): <root>/<split>/.
DEFAULT_PREDICTION_ROOT = os.path.join("work_dirs", "gcg_result")
MANIFEST = "run.json"


def default_prediction_dir(split: str) -> str:
    """Where predictions of `split` go unless --output-dir / --prediction-dir says otherwise."""
    return os.path.join(DEFAULT_PREDICTION_ROOT, split)


def prediction_path(prediction_dir: str | os.PathLike, image_id: Any) -> Path:
    """The prediction file of one image."""
    return Path(prediction_dir) / f"{image_id}.json"


def prediction_record(image_id: Any, caption: str, phrases: Sequence[str], masks: Any) -> dict:
    """GLaMM's per-image prediction: caption, phrases and [n, H, W] bool masks as RLE."""
    return {
        "image_id": image_id,
        "caption": caption,
        "phrases": list(phrases),
        "pred_masks": masks_to_rles(masks),
    }


def has_prediction(prediction_dir: str | os.PathLike, image_id: Any) -> bool:
    """Whether a complete prediction of `image_id` exists (a resumed run skips it).

    Files are written atomically, so an existing file is complete; one that still does not parse
    or names another image (written by something else) is logged and redone.
    """
    path = prediction_path(prediction_dir, image_id)
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            ok = json.load(handle).get("image_id") == image_id
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        logger.warning("%s is not a valid prediction of image %r; redoing it", path, image_id)
    return ok


def check_manifest(
    prediction_dir: str | os.PathLike,
    manifest: Mapping[str, Any],
    *,
    overwrite: bool = False,
    write: bool = True,
) -> None:
    """Make sure `prediction_dir` only ever holds predictions of one run setting.

    Arguments:
      prediction_dir: the folder of per-image files.
      manifest: what produces the predictions (config, checkpoint, split, generation settings).
      overwrite: delete earlier predictions and start over.
      write: write the manifest (rank 0 only; the other ranks only check).

    Raises `SystemExit` when the folder holds predictions of another setting.
    """
    folder = Path(prediction_dir)
    path = folder / MANIFEST
    if overwrite:
        if write and folder.is_dir():
            removed = [p for p in folder.glob("*.json") if p.name != MANIFEST]
            for file in removed:
                file.unlink()
            logger.info("--overwrite: removed %d earlier predictions from %s", len(removed), folder)
    elif path.is_file():
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle)
        changed = [
            f"{k}: {previous.get(k)!r} -> {manifest.get(k)!r}"
            for k in sorted(set(previous) | set(manifest))
            if previous.get(k) != manifest.get(k)
        ]
        if changed:
            raise SystemExit(
                f"{folder} holds predictions of another run ({'; '.join(changed)}); pass another "
                "--output-dir, or --overwrite to start over"
            )
    if write:
        write_json_atomic(path, dict(manifest), indent=2)


def load_predictions(
    prediction_dir: str | os.PathLike, image_ids: Sequence[Any]
) -> list[GcgSample]:
    """Read the predictions of `image_ids`; raises naming the missing images and the fix."""
    missing = [i for i in image_ids if not prediction_path(prediction_dir, i).is_file()]
    if missing:
        raise SystemExit(
            f"{prediction_dir} lacks predictions of {len(missing)} of {len(image_ids)} images "
            f"(e.g. {missing[:5]}); run (or resume) GCG_val/gcg_code/gcg_infer.py for this split "
            "with the same --output-dir"
        )
    out = []
    for image_id in image_ids:
        path = prediction_path(prediction_dir, image_id)
        with open(path, encoding="utf-8") as handle:
            pred = json.load(handle)
        try:
            out.append(GcgSample(image_id, pred["caption"], pred["phrases"], pred["pred_masks"]))
        except KeyError as error:
            raise SystemExit(
                f"{path} lacks {error}; a GCG prediction holds image_id, caption, phrases and "
                "pred_masks"
            ) from error
    return out


def ground_truth_sample(gt: Any) -> GcgSample:
    """A `GCGGroundTruth` (hg_lmm.datasets) as the metrics' record; masks re-encoded as RLE
    from the decoded masks, so polygon and RLE ground truths are handled alike."""
    return GcgSample(gt.image_id, gt.caption, gt.labels, masks_to_rles(gt.masks))


__all__ = [
    "DEFAULT_PREDICTION_ROOT",
    "GCG_INSTRUCTION",
    "MANIFEST",
    "check_manifest",
    "default_prediction_dir",
    "ground_truth_sample",
    "has_prediction",
    "load_predictions",
    "prediction_path",
    "prediction_record",
]
