"""The checkpoint policy of training: atomic checkpoint files, checkpoints that load
weights-only, and every rank's RNG states saved with each checkpoint (what an exact resume needs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS

from hg_lmm.utils.files import write_bytes_atomic

# The message-hub key under which every rank's RNG states travel into each checkpoint.
RNG_STATES_KEY = "hg_lmm_rng_states"
ATOMIC_BACKEND = "hg_lmm_atomic_local"


_HISTORY_TAG = "__history_buffer__"


def _to_plain(obj: Any) -> Any:
    """Message-hub contents as plain data: HistoryBuffers become tagged dicts, numpy -> Python."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    if isinstance(obj, HistoryBuffer):
        logs, counts = obj.data
        return {_HISTORY_TAG: [logs.tolist(), counts.tolist(), obj.max_length]}
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    return obj


def _from_plain(obj: Any) -> Any:
    from mmengine.logging.history_buffer import HistoryBuffer

    if isinstance(obj, dict):
        if set(obj) == {_HISTORY_TAG}:
            logs, counts, max_length = obj[_HISTORY_TAG]
            return HistoryBuffer(logs, counts, max_length)
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_plain(v) for v in obj]
    return obj


@HOOKS.register_module(force=True)
class WeightsOnlyCheckpointHook(Hook):
    """Make every checkpoint loadable with `torch.load(weights_only=True)`.

    torch >= 2.6 loads weights-only by default, and mmengine's message hub pickles its
    `HistoryBuffer`s (and numpy scalars), so neither `--resume` nor our safe loader could read
    a plain mmengine checkpoint. This hook stores the message hub as plain data when saving and
    restores it right after loading, before the runner resumes from it.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in ("message_hub", "meta"):
            if key in checkpoint:
                checkpoint[key] = _to_plain(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = _from_plain(checkpoint["message_hub"])


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, except that a file is written atomically (temporary file,
    fsync, rename): a run killed while saving `iter_N.pth` or `last_checkpoint` leaves the previous
    files intact instead of a truncated one that a resume would trip over."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        write_bytes_atomic(filepath, obj)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = "utf-8") -> None:
        write_bytes_atomic(filepath, obj.encode(encoding))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


@HOOKS.register_module(force=True)
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's `CheckpointHook` whose files are written through `AtomicLocalBackend` (unless
    `backend_args` names another backend). Same arguments as `CheckpointHook`.

    DeepSpeed checkpoints are folders that DeepSpeed writes itself, file by file; only
    `last_checkpoint` is atomic there (it is written after the folder is complete).
    """

    def __init__(self, *args: Any, backend_args: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, backend_args=backend_args or {"backend": ATOMIC_BACKEND}, **kwargs)


def checkpoint_due(runner) -> bool:
    """Whether an iteration-based `CheckpointHook` of `runner` saves after the current iteration
    (the hook's own rule: every `interval` iterations from `save_begin`, and the last one)."""
    for hook in runner.hooks:
        if isinstance(hook, CheckpointHook) and not hook.by_epoch:
            if hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or (
                hook.save_last and hook.is_last_train_iter(runner)
            ):
                return True
    return False


@HOOKS.register_module(force=True)
class RNGStateHook(Hook):
    """Puts every rank's RNG states (`hg_lmm.engine.rng.rng_state`) into the message hub right
    before a checkpoint is saved, so that they are part of it.

    The message hub is saved by both of mmengine's runners (with DeepSpeed too, inside the
    folder's client state) and restored on resume, where `EpochsAsItersTrainLoop` sets the states
    back once the data loader has skipped the batches already trained on. Ranks draw different
    amounts of randomness (their samples differ in size), so the states of all ranks are gathered
    (in rank order) and each rank restores its own.
    """

    # After the optimizer step and logging (LOW), before CheckpointHook saves (VERY_LOW).
    priority = "LOW"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not checkpoint_due(runner):
            return
        from mmengine.dist import all_gather_object, get_world_size

        from hg_lmm.engine.rng import rng_state

        state = rng_state()
        states = all_gather_object(state) if get_world_size() > 1 else [state]
        runner.message_hub.update_info(RNG_STATES_KEY, states)
