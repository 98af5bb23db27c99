"""An iteration-based training loop sized in epochs (what the released configs specify)."""

from __future__ import annotations

from mmengine.registry import LOOPS
from mmengine.runner import IterBasedTrainLoop


@LOOPS.register_module(force=True)
class EpochsAsItersTrainLoop(IterBasedTrainLoop):
    """`IterBasedTrainLoop` with `max_iters = max_epochs * len(dataloader)`.

    Iteration-based, so a resumed run skips the batches it already trained on and stops at the
    same total (an epoch-based loop restarts the interrupted epoch from its first batch), while
    configs keep the reference's schedules in epochs.

    Arguments:
      runner, dataloader: as for mmengine's loops.
      max_epochs: passes over the training set.
      val_begin, val_interval: as `IterBasedTrainLoop` (validation is off by default).
    """

    def __init__(
        self, runner, dataloader, max_epochs: int, val_begin: int = 1, val_interval: int = 10**9
    ) -> None:
        if isinstance(dataloader, dict):
            dataloader = runner.build_dataloader(dataloader, seed=runner.seed)
        max_iters = int(max_epochs * len(dataloader))
        if max_iters < 1:
            raise ValueError(
                f"max_epochs={max_epochs} over {len(dataloader)} batches gives no iteration; "
                "check the training set and batch size"
            )
        super().__init__(runner, dataloader, max_iters, val_begin, val_interval)
