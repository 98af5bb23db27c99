"""Grounded conversation generation (GranD-f): prediction files and their evaluation inputs.

Inference writes one JSON per image, `<prediction dir>/<image_id>.json`, in GLaMM's format
`{"image_id", "caption", "phrases", "pred_masks": [COCO RLE, ...]}`, atomically (a file exists only
once it is complete). A restarted inference therefore skips every image whose file exists and
redoes the rest. `run.json` in the same folder records what produced the predictions (the config
and checkpoint with hashes of their content, and the generation settings), so that a restart with
another model, even one saved at the same path, cannot silently mix two models' outputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hg_lmm.evaluation.gcg_metrics import GcgSample
from hg_lmm.utils.files import write_json_atomic
from hg_lmm.utils.rle import masks_to_rles

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


# Manifest entries that only record where things were: the content hashes decide.
_PATH_KEYS = ("config", "checkpoint")


def run_manifest(config: str, checkpoint: str, **settings: Any) -> dict[str, Any]:
    """What produces a folder of predictions: the config and checkpoint (paths, and hashes of
    their content) and the generation settings.

    The config hash is taken over the resolved config (`_base_` files included), the checkpoint
    hash over the file (or a DeepSpeed folder's model states), so replacing either at the same
    path is noticed.
    """
    import hashlib

    from mmengine.config import Config

    from hg_lmm.utils.checkpoint import checkpoint_sha256

    resolved = Config.fromfile(config).pretty_text
    return {
        "config": os.path.abspath(config),
        "config_sha256": hashlib.sha256(resolved.encode("utf-8")).hexdigest(),
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        **settings,
    }


def _prediction_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.json") if p.name != MANIFEST]


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
      manifest: what produces the predictions (`run_manifest`: config and checkpoint hashes,
        split, generation settings).
      overwrite: delete earlier predictions and start over.
      write: write the manifest (rank 0 only; the other ranks only check).

    Raises `SystemExit` when the folder holds predictions of another setting: another checkpoint
    or config content (a changed path alone is fine), split or generation setting. A folder with
    a manifest but no prediction (a run that failed before its first image) is simply taken over.
    """
    folder = Path(prediction_dir)
    path = folder / MANIFEST
    if overwrite:
        if write and folder.is_dir():
            removed = _prediction_files(folder)
            for file in removed:
                file.unlink()
            logger.info("--overwrite: removed %d earlier predictions from %s", len(removed), folder)
    elif path.is_file() and _prediction_files(folder):
        try:
            with open(path, encoding="utf-8") as handle:
                previous = json.load(handle)
            if not isinstance(previous, dict):
                raise ValueError(f"a {type(previous).__name__}, not an object")
        except (OSError, ValueError) as error:
            raise SystemExit(
                f"{path} is not a readable manifest ({error}), so the predictions in {folder} "
                "cannot be matched to a model; pass --overwrite to start over"
            ) from error
        keys = sorted((set(previous) | set(manifest)) - set(_PATH_KEYS))
        changed = [
            f"{k}: {previous.get(k)!r} -> {manifest.get(k)!r}"
            for k in keys
            if previous.get(k) != manifest.get(k)
        ]
        if changed:
            raise SystemExit(
                f"{folder} holds predictions of another run ({'; '.join(changed)}; the earlier "
                f"run used {previous.get('checkpoint')!r}); pass another --output-dir, or "
                "--overwrite to start over"
            )
    if write:
        write_json_atomic(path, dict(manifest), indent=2)


def load_predictions(
    prediction_dir: str | os.PathLike, image_ids: Sequence[Any]
) -> list[GcgSample]:
    """Read the predictions of `image_ids`; raises naming the missing images or the damaged file,
    and the fix."""
    missing = [i for i in image_ids if not prediction_path(prediction_dir, i).is_file()]
    if missing:
        raise SystemExit(
            f"{prediction_dir} lacks predictions of {len(missing)} of {len(image_ids)} images "
            f"(e.g. {missing[:5]}); run (or resume) GCG_val/gcg_code/gcg_infer.py for this split "
            "with the same --output-dir"
        )
    redo = (
        "; delete it and rerun GCG_val/gcg_code/gcg_infer.py with the same --output-dir (it "
        "redoes the images without a prediction)"
    )
    out = []
    for image_id in image_ids:
        path = prediction_path(prediction_dir, image_id)
        try:
            with open(path, encoding="utf-8") as handle:
                pred = json.load(handle)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SystemExit(
                f"{path} is not valid JSON ({error}): it is torn or damaged{redo}"
            ) from error
        try:
            out.append(GcgSample(image_id, pred["caption"], pred["phrases"], pred["pred_masks"]))
        except (KeyError, TypeError) as error:
            raise SystemExit(
                f"{path} is not a GCG prediction (no {error}; one holds image_id, caption, "
                f"phrases and pred_masks){redo}"
            ) from error
        if len(out[-1].phrases) != len(out[-1].masks):
            raise SystemExit(
                f"{path} has {len(out[-1].phrases)} phrases but {len(out[-1].masks)} masks{redo}"
            )
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
    "run_manifest",
]
