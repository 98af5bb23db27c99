"""The checkpoint policy: the atomic checkpoint backend and RNG states a weights-only checkpoint
carries."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


def test_atomic_backend_writes_through_atomic_open(tmp_path, monkeypatch):
    from mmengine.fileio import get_file_backend

    from hg_lmm.engine.checkpointing import ATOMIC_BACKEND, AtomicCheckpointHook, AtomicLocalBackend
    from hg_lmm.utils import files

    backend = get_file_backend(str(tmp_path), backend_args={"backend": ATOMIC_BACKEND})
    assert isinstance(backend, AtomicLocalBackend)
    target = tmp_path / "iter_2.pth"
    backend.put(b"old", str(target))

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b"new and longer", str(target))
    assert target.read_bytes() == b"old"
    assert AtomicCheckpointHook(interval=2).backend_args == {"backend": ATOMIC_BACKEND}


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    from hg_lmm.engine.rng import rng_state, set_rng_state

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    state = rng_state()
    expected = (torch.rand(4), np.random.rand(3), random.random())
    torch.save({"message_hub": {"runtime_info": {"rng": [state]}}}, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)["message_hub"]["runtime_info"]
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(loaded["rng"][0])
    again = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]
