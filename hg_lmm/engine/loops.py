"""An iteration-based training loop sized in epochs (what the released configs specify), whose
resume is exact."""

from __future__ import annotations

import functools
import logging
from typing import Any

from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator

from hg_lmm.engine.checkpointing import RNG_STATES_KEY, RNGStateHook
from hg_lmm.utils.checkpoint import CheckpointError, check_checkpoint_file


def resume_source(runner) -> str | None:
    """The checkpoint `runner` will resume (or load) from, as mmengine's runners decide it."""
    from mmengine.runner import find_latest_checkpoint

    resume, load_from = getattr(runner, "_resume", False), getattr(runner, "_load_from", None)
    if isinstance(resume, str):  # FlexibleRunner accepts the path itself
        return resume
    if resume and load_from is None:
        return find_latest_checkpoint(runner.work_dir)
    return load_from


def check_resume_source(runner) -> None:
    """Raise `CheckpointError` naming the file when the checkpoint to resume from is missing,
    torn (a save was killed) or not a checkpoint, before mmengine fails on it with a traceback."""
    source = resume_source(runner)
    if source is None or "://" in str(source):
        return
    try:
        check_checkpoint_file(source, deep=True)
    except CheckpointError as error:
        raise CheckpointError(
            f"cannot resume training: {error}. Resume from an earlier checkpoint instead "
            "(--resume work_dirs/<run>/iter_<n>.pth), or start over without --resume"
        ) from error


class _RestoreRNGAfter:
    """Wraps the loop's data iterator: after `skip` batches it sets the RNG states back to those
    saved with the checkpoint, i.e. right where the uninterrupted run drew its next batch."""

    def __init__(self, iterator: Any, skip: int, state: dict[str, Any]) -> None:
        self._iterator, self._left, self._state = iterator, skip, state

    def __iter__(self) -> _RestoreRNGAfter:
        return self

    def __next__(self) -> Any:
        if self._left == 0 and self._state is not None:
            from hg_lmm.engine.rng import set_rng_state

            set_rng_state(self._state)
            self._state = None
        self._left -= 1
        return next(self._iterator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


@LOOPS.register_module(force=True)
class EpochsAsItersTrainLoop(IterBasedTrainLoop):
    """`IterBasedTrainLoop` with `max_iters = max_epochs * len(dataloader)` and an exact resume.

    Iteration-based, so a resumed run skips the batches it already trained on and stops at the
    same total (an epoch-based loop restarts the interrupted epoch from its first batch), while
    configs keep the reference's schedules in epochs.

    A resumed run is bit-identical to an uninterrupted one (same weights, `torch.equal`), given
    deterministic kernels:
      - the checkpoint to resume from is checked first (a torn file is named, not a traceback);
      - `RNGStateHook` (registered here if the config lacks it) saves every rank's RNG states
        with each checkpoint; they are restored once the skipped batches have been drawn;
      - the sampler and the data-loader workers are re-seeded with the checkpoint's seed: with
        `randomness.seed=None` mmengine picks a new seed for the new process and builds the
        data loader with it before the checkpoint's seed is known.

    Arguments:
      runner, dataloader: as for mmengine's loops.
      max_epochs: passes over the training set.
      val_begin, val_interval: as `IterBasedTrainLoop` (validation is off by default).
    """

    def __init__(
        self, runner, dataloader, max_epochs: int, val_begin: int = 1, val_interval: int = 10**9
    ) -> None:
        check_resume_source(runner)
        if isinstance(dataloader, dict):
            dataloader = runner.build_dataloader(dataloader, seed=runner.seed)
        max_iters = int(max_epochs * len(dataloader))
        if max_iters < 1:
            raise ValueError(
                f"max_epochs={max_epochs} over {len(dataloader)} batches gives no iteration; "
                "check the training set and batch size"
            )
        super().__init__(runner, dataloader, max_iters, val_begin, val_interval)
        if not any(isinstance(hook, RNGStateHook) for hook in runner.hooks):
            runner.register_hook(RNGStateHook())

    def run(self) -> Any:
        if self._iter > 0:  # resumed
            self._reseed_data()
            state = self._saved_rng_state()
            if state is not None:
                self.dataloader_iterator = _RestoreRNGAfter(
                    self.dataloader_iterator, self._iter, state
                )
        return super().run()

    def _saved_rng_state(self) -> dict[str, Any] | None:
        from mmengine.dist import get_rank, get_world_size

        states = self.runner.message_hub.get_info(RNG_STATES_KEY)
        if states is None:
            print_log(
                "the checkpoint holds no RNG states (written before they were saved): the "
                "resumed run continues correctly but is not bit-identical to an uninterrupted one",
                logger="current",
                level=logging.WARNING,
            )
            return None
        if len(states) != get_world_size():
            print_log(
                f"the checkpoint was saved by {len(states)} processes and is resumed with "
                f"{get_world_size()}: RNG states are not restored, so the resumed run is not "
                "bit-identical to an uninterrupted one",
                logger="current",
                level=logging.WARNING,
            )
            return None
        return states[get_rank()]

    def _reseed_data(self) -> None:
        """Seed the sampler and the worker init function with the runner's (resumed) seed."""
        seed, loader, changed = self.runner.seed, self.dataloader, []
        sampler = getattr(loader.batch_sampler, "sampler", None) or loader.sampler
        if getattr(sampler, "seed", seed) != seed:
            changed.append(f"sampler seed {sampler.seed} -> {seed}")
            sampler.seed = seed
        init = loader.worker_init_fn
        if isinstance(init, functools.partial) and init.keywords.get("seed", seed) != seed:
            changed.append(f"worker seed {init.keywords['seed']} -> {seed}")
            loader.worker_init_fn = functools.partial(
                init.func, *init.args, **{**init.keywords, "seed": seed}
            )
        if changed:
            print_log(
                f"resumed run: data order follows the checkpoint's seed ({', '.join(changed)})",
                logger="current",
                level=logging.INFO,
            )
            self.dataloader_iterator = _InfiniteDataloaderIterator(loader)
