"""File readers shared by the datasets; each turns a low-level failure into a named DatasetError."""

from __future__ import annotations

import json
import os
import pickle
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from hg_lmm.datasets.errors import (
    AnnotationError,
    CorruptImageError,
    MissingFileError,
)


def require_file(path: str, what: str, fix: str) -> str:
    """Return `path` if it is a file, else raise MissingFileError naming `what` and `fix`."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{what} not found: {path}. {fix}")
    return path


def load_image(path: str, *, what: str = "image", mode: str = "RGB") -> Image.Image:
    """Read an image fully (not lazily), so a truncated file fails here and not in the model.

    Returns a PIL image converted to `mode` (RGB by default; "keep" leaves the mode unchanged).
    """
    require_file(
        path, what, "Check the data root / image folder in the config, or re-download the file."
    )
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if mode == "keep" else im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(
            f"cannot decode {what} {path}: {e}. Re-download or re-extract this file, or wrap the "
            "dataset in hg_lmm.datasets.SkipBadSamples to skip it with a warning."
        ) from e


def load_json(path: str, *, what: str = "annotation file") -> Any:
    require_file(path, what, "Check the annotation path in the config (see data/README.md).")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(
            f"{what} {path} is not valid json ({e}); it is truncated or damaged: re-download it."
        ) from e


def load_pickle(path: str, *, what: str = "pickle file") -> Any:
    require_file(path, what, "Check the annotation path in the config (see data/README.md).")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as e:  # a damaged pickle can fail with almost any error
        reason = str(e) or type(e).__name__
        raise AnnotationError(
            f"{what} {path} is not a readable pickle ({type(e).__name__}: {reason}); it is "
            "truncated or another kind of file: re-download it."
        ) from e


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic colour code: [h, w, 3] uint8 -> [h, w] int64, id = R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_id`: [h, w] int -> [h, w, 3] uint8."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


def coco_segmentation_to_mask(segm: Any, height: int, width: int, *, source: str) -> np.ndarray:
    """A COCO `segmentation` (polygons, or compressed / uncompressed RLE) -> [h, w] bool.

    `source` names the annotation in the error raised for a malformed segmentation.
    """
    from pycocotools import mask as mask_utils

    from hg_lmm.utils.rle import rle_to_mask

    try:
        if isinstance(segm, list):
            # Polygons with fewer than 3 points cannot be filled (mmdet ignores them likewise).
            polys = [p for p in segm if len(p) >= 6 and len(p) % 2 == 0]
            if not polys:
                raise ValueError("no polygon with at least 3 points")
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, height, width)))
            mask = mask.astype(bool)
        elif isinstance(segm, dict):
            mask = rle_to_mask(segm)
        else:
            raise ValueError(f"unknown segmentation type {type(segm).__name__}")
    except (ValueError, TypeError, KeyError) as e:
        raise AnnotationError(
            f"malformed segmentation in {source}: {e}. Fix or drop this annotation."
        ) from e
    if mask.shape != (height, width):
        raise AnnotationError(
            f"segmentation of {source} is {mask.shape[0]}x{mask.shape[1]} but the image is "
            f"{height}x{width}; the annotation belongs to another image or size."
        )
    return mask
