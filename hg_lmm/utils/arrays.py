"""Array conversion shared by the RLE codec, the metrics and the overlays.

It does not import torch: a tensor is recognised by its `detach` method, so the metric and RLE
modules stay importable (and cheap to import) without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(array: Any) -> np.ndarray:
    """Numpy view of a numpy array, a torch tensor (detached, moved to CPU) or a nested list.

    Arguments:
      array: [...] any array-like.

    Returns:
      [...] the same values as a numpy array (no copy for a numpy input).
    """
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


__all__ = ["as_numpy"]
