"""The random-number-generator states of one process, as plain data a checkpoint can carry.

A resumed training run is bit-identical to an uninterrupted one only if every generator it draws
from continues where it stopped: torch's CPU generator (dropout in the heads, DataLoader base
seeds), the current CUDA device's generator, numpy's and Python's global generators (data
transforms). `rng_state()` captures them as tensors, ints, lists and tuples only, so a checkpoint
holding them still loads with `torch.load(weights_only=True)`; `set_rng_state()` restores them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """This process's generator states.

    Returns:
      {"torch": uint8 tensor, "numpy": {"keys": [624 ints], "pos", "has_gauss", "gauss"},
       "random": Python's state tuple, and "cuda": uint8 tensor when CUDA is initialised}.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` captured (tensors may come back on a GPU from a checkpoint)."""
    torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np.asarray(np_state["keys"], dtype=np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["gauss"]),
        )
    )
    version, internal, gauss = state["random"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.as_tensor(state["cuda"]).cpu())


__all__ = ["rng_state", "set_rng_state"]
