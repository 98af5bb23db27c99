"""Binary masks <-> COCO run-length encoding, and an atomic JSON writer for prediction files.

Predictions (GCG masks, per-rank records) are saved as compressed COCO RLE so that they are small
and load straight into pycocotools. The `counts` field is kept as `str` (pycocotools returns
`bytes`) so that the records survive `json.dump` unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


def _as_numpy(mask: Any) -> np.ndarray:
    """Return a numpy view of a numpy array or torch tensor (moved to CPU)."""
    if hasattr(mask, "detach"):  # a torch tensor; no torch import needed here
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask)


def mask_to_rle(mask: Any) -> RLE:
    """Encode one binary mask as a JSON-safe compressed COCO RLE.

    Arguments:
      mask: [H, W] bool or 0/1 array or tensor; nonzero pixels are foreground.

    Returns:
      `{"size": [H, W], "counts": str}`.
    """
    array = _as_numpy(mask)
    if array.ndim != 2:
        raise ValueError(f"mask_to_rle expects one [H, W] mask, got shape {tuple(array.shape)}")
    # pycocotools reads column-major uint8 data; a C-ordered array would be encoded transposed.
    rle = mask_utils.encode(np.asfortranarray(array != 0, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def masks_to_rles(masks: Any) -> list[RLE]:
    """Encode a stack of binary masks.

    Arguments:
      masks: [N, H, W] bool or 0/1 array or tensor (N may be 0).

    Returns:
      N JSON-safe RLE dicts, in order.
    """
    array = _as_numpy(masks)
    if array.ndim != 3:
        raise ValueError(f"masks_to_rles expects [N, H, W] masks, got shape {tuple(array.shape)}")
    return [mask_to_rle(m) for m in array]


def _to_pycocotools(rle: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a JSON RLE (compressed str counts or uncompressed list counts) into pycocotools form."""
    if "size" not in rle or "counts" not in rle:
        raise ValueError(f"not a COCO RLE (needs 'size' and 'counts'): keys {sorted(rle)}")
    height, width = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE, as some official ground truths store it
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode one COCO RLE (compressed or uncompressed counts) to a binary mask.

    Returns:
      [H, W] bool array.
    """
    return mask_utils.decode(_to_pycocotools(rle)).astype(bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels of one COCO RLE."""
    return int(mask_utils.area(_to_pycocotools(rle)))


def rle_bbox(rle: Mapping[str, Any]) -> list[float]:
    """COCO box `[x, y, w, h]` of one RLE (all zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_to_pycocotools(rle))]


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = None) -> None:
    """Write `obj` as JSON so that readers see either the old file or the complete new one
    (`hg_lmm.utils.files.atomic_open`). An interrupted evaluation therefore never leaves a
    truncated prediction file behind; the file is created 0644 (under the usual umask)."""
    from hg_lmm.utils.files import atomic_open

    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent)


__all__ = [
    "RLE",
    "mask_to_rle",
    "masks_to_rles",
    "rle_area",
    "rle_bbox",
    "rle_to_mask",
    "write_json_atomic",
]
