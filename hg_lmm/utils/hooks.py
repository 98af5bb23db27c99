"""mmengine hooks: a progress bar over training iterations and a learning-curve record."""

from __future__ import annotations

import json
import os
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


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
                tmp = self._path(runner) + ".tmp"
                with open(tmp, "w") as f:
                    json.dump({"interval": self.interval, "points": self._points}, f, indent=1)
                os.replace(tmp, self._path(runner))

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
