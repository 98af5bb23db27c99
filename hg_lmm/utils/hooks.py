"""mmengine hooks and a storage backend for training: a progress bar and learning curve, atomic
checkpoint files, weights-only-loadable checkpoints, and the RNG states an exact resume needs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS

from hg_lmm.utils.files import atomic_open, write_bytes_atomic

# The message-hub key under which every rank's RNG states travel into each checkpoint.
RNG_STATES_KEY = "hg_lmm_rng_states"
ATOMIC_BACKEND = "hg_lmm_atomic_local"


@HOOKS.register_module(force=True)
class ProgressHook(Hook):
    """A tqdm bar over all training iterations (main process only), plus a learning curve.

    Every `interval` iterations the mean of each logged loss term over those iterations is
    appended to `<work_dir>/learning_curve.json` ({"interval": k, "points": [{"iter": i,
    "loss": ..., "loss_mask": ..., ...}, ...]}), so the curve survives an interrupted run and is
    continued (not restarted) on resume.

    Arguments:
      interval: iterations per learning-curve point.
    """

    priority = "VERY_LOW"

    def __init__(self, interval: int = 10) -> None:
        self.interval = interval
        self._bar: Any = None
        self._sums: dict[str, float] = {}
        self._count = 0
        self._points: list[dict[str, float]] = []

    def _path(self, runner) -> str:
        return os.path.join(runner.work_dir, "learning_curve.json")

    def before_train(self, runner) -> None:
        if os.path.isfile(self._path(runner)):
            with open(self._path(runner)) as f:
                kept = json.load(f).get("points", [])
            self._points = [p for p in kept if p["iter"] <= runner.iter]
        if runner.rank == 0:
            from tqdm import tqdm

            self._bar = tqdm(
                total=runner.max_iters,
                initial=runner.iter,
                desc="train",
                unit="it",
                dynamic_ncols=True,
            )

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        values = {k: float(v.detach()) for k, v in (outputs or {}).items() if "loss" in k}
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1
        if self._bar is not None:
            self._bar.update(1)
            if "loss" in values:
                self._bar.set_postfix(loss=f"{values['loss']:.4f}")
        if self._count == self.interval:
            point = {"iter": runner.iter + 1}
            point.update({k: v / self._count for k, v in sorted(self._sums.items())})
            self._points.append(point)
            self._sums, self._count = {}, 0
            if runner.rank == 0:
                with atomic_open(self._path(runner), "w") as f:
                    json.dump({"interval": self.interval, "points": self._points}, f, indent=1)

    def after_train(self, runner) -> None:
        if self._bar is not None:
            self._bar.close()


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
    """Puts every rank's RNG states (`hg_lmm.utils.rng.rng_state`) into the message hub right
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

        from hg_lmm.utils.rng import rng_state

        state = rng_state()
        states = all_gather_object(state) if get_world_size() > 1 else [state]
        runner.message_hub.update_info(RNG_STATES_KEY, states)


@HOOKS.register_module(force=True)
class DataReportHook(Hook):
    """Logs each data problem of the training set once and a summary with counts at the end.

    Problems (a sample that could not be loaded, a phrase dropped by the training policy of
    `TokenizePieces`) travel with the batch as `DataNote`s, also from DataLoader workers, which
    start afresh every epoch and so cannot remember what they already reported
    (`hg_lmm.datasets.report`). The counts are per process (each rank reports its own samples).
    """

    priority = "NORMAL"

    def __init__(self) -> None:
        from hg_lmm.datasets.report import DataReport

        self.report = DataReport()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        from hg_lmm.datasets.report import sample_notes

        samples = data_batch.get("data", ()) if isinstance(data_batch, dict) else ()
        for sample in samples:
            for note in sample_notes(sample):
                self.report.add(note, log=runner.logger.warning)

    def after_train(self, runner) -> None:
        summary = self.report.summary()
        if summary:
            runner.logger.warning(summary)
