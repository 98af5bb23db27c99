"""Binary masks <-> COCO run-length encoding.

Predictions (GCG masks, chat answers) are saved as compressed COCO RLE so that they are small and
load straight into pycocotools; the datasets decode RLE segmentations with it. The `counts` field
is kept as `str` (pycocotools returns `bytes`) so that the records survive `json.dump` unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from hg_lmm.utils.arrays import as_numpy

RLE = dict[str, Any]


def mask_to_rle(mask: Any) -> RLE:
    """Encode one binary mask as a JSON-safe compressed COCO RLE.

    Arguments:
      mask: [H, W] bool or 0/1 array or tensor; nonzero pixels are foreground.

    Returns:
      `{"size": [H, W], "counts": str}`.
    """
    array = as_numpy(mask)
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
    array = as_numpy(masks)
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


__all__ = [
    "RLE",
    "mask_to_rle",
    "masks_to_rles",
    "rle_area",
    "rle_bbox",
    "rle_to_mask",
]
