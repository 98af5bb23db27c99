"""mmengine hooks for training: a progress bar and learning curve, and the data report.

The checkpoint policy (atomic files, weights-only loading, RNG states) is in
`hg_lmm.engine.checkpointing`."""

from __future__ import annotations

import json
import os
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from hg_lmm.engine.curves import CURVE_JSON
from hg_lmm.utils.files import atomic_open


@HOOKS.register_module(force=True)
class ProgressHook(Hook):
    """A tqdm bar over all training iterations (main process only), plus a learning curve.

    Every `interval` iterations the mean of each logged loss term over those iterations and the
    learning rate of the last one are appended to `<work_dir>/learning_curve.json`
    ({"interval": k, "points": [{"iter": i, "loss": ..., "loss_mask": ..., "lr": ...}, ...]}), so
    the curve survives an interrupted run and is continued (not restarted) on resume. When
    training ends it is drawn as `<work_dir>/learning_curve.png` (`hg_lmm.engine.curves`).

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
        return os.path.join(runner.work_dir, CURVE_JSON)

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
            lr = _current_lr(runner)
            if lr is not None:
                point["lr"] = lr
            self._points.append(point)
            self._sums, self._count = {}, 0
            if runner.rank == 0:
                with atomic_open(self._path(runner), "w") as f:
                    json.dump({"interval": self.interval, "points": self._points}, f, indent=1)

    def after_train(self, runner) -> None:
        if self._bar is not None:
            self._bar.close()
        if runner.rank == 0 and self._points:
            from hg_lmm.engine.curves import CURVE_PNG, plot_curve

            out = plot_curve(
                {"interval": self.interval, "points": self._points},
                os.path.join(runner.work_dir, CURVE_PNG),
            )
            runner.logger.info(f"learning curve drawn in {out}")


def _current_lr(runner) -> float | None:
    """The learning rate of the iteration just run (of the first parameter group), as mmengine's
    `RuntimeInfoHook` put it into the message hub before the iteration; None if absent."""
    scalar = runner.message_hub.log_scalars.get("train/lr")
    return None if scalar is None else float(scalar.current())


@HOOKS.register_module(force=True)
class DataReportHook(Hook):
    """Logs each data problem of the training set once and a summary with counts at the end.

    Problems (a sample that could not be loaded, a phrase dropped by the training policy of
    `TokenizePieces`) travel with the batch as `DataNote`s, also from DataLoader workers, which
    start afresh every epoch and so cannot remember what they already reported
    (`hg_lmm.datasets.report`). Each rank reports its own samples; with several ranks, rank 0
    also logs the report summed over all of them (the sampler gives each rank other samples).
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
        from mmengine.dist import all_gather_object, get_world_size

        summary = self.report.summary()
        if summary:
            runner.logger.warning(summary)
        world_size = get_world_size()
        if world_size > 1:
            # Every rank takes part in the gather, also one that met no problem.
            reports = all_gather_object(self.report)
            total = type(self.report).merged(reports).summary(f"all {world_size} processes")
            if total and runner.rank == 0:
                runner.logger.warning(total)
