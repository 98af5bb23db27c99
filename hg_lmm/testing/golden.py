"""Deterministic, RNG-free tensors used by the golden fixtures.

The rule is described in docs/architecture.md, "Golden fixtures and tests".

Every machine rebuilds the same bits, so the reference's recorded outputs can be compared exactly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

_M = 0xFFFFFFFF


def hash_uniform(shape: Sequence[int], seed: int) -> torch.Tensor:
    """u(shape, seed): float32 values in [-1, 1) from an integer hash of the flat index."""
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.uint64)
    x = (i * np.uint64(2654435761) + np.uint64(seed * 40503 + 12345)) & np.uint64(_M)
    for k in range(3):
        x ^= x >> np.uint64(16)
        if k < 2:
            x = (x * np.uint64(0x45D9F3B)) & np.uint64(_M)
    v = (x.astype(np.float64) / 2.0**31 - 1.0).astype(np.float32)
    return torch.from_numpy(v.reshape(tuple(shape)))


def golden_weight(key: str, shape: Sequence[int]) -> torch.Tensor:
    """The fixture weight for state-dict key `key` of `shape`."""
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    u = hash_uniform(shape, zlib.crc32(key.encode()) % 100003)
    if key.endswith("running_var"):
        return 1 + 0.5 * u.abs()
    if key.endswith("running_mean"):
        return 0.1 * u
    if len(shape) >= 2:
        return u * math.sqrt(3.0 / math.prod(shape[1:]))
    if key.endswith("text_layer_weights"):
        return 0.5 * u
    if key.endswith(".weight"):
        return 1 + 0.1 * u
    return 0.1 * u


def golden_state_dict(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Build every tensor of a fixture's `state_dict_shapes`."""
    return {k: golden_weight(k, s) for k, s in shapes.items()}
