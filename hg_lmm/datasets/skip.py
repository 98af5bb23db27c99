"""Skipping undecodable samples, loudly: every skip is logged with a running count."""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import Dataset

from hg_lmm.datasets.errors import DatasetError

logger = logging.getLogger(__name__)


class SkipBadSamples(Dataset):
    """Wraps a dataset; a sample that raises a DatasetError is replaced by the next good one.

    Arguments:
      dataset: the dataset to wrap (its errors must derive from DatasetError).
      max_tries: how many consecutive indices to try before giving up; a run of failures that
        long means the data or the config is broken, which must stop the run.

    Each skip logs a warning naming the sample, the error and the running count. `num_skipped`
    and `skipped` (index -> message) hold the counts of this process; with DataLoader workers
    each worker keeps its own.
    """

    def __init__(self, dataset: Dataset, *, max_tries: int = 10) -> None:
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {max_tries}")
        self.dataset = dataset
        self.max_tries = max_tries
        self.num_skipped = 0
        self.skipped: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> Any:
        n = len(self)
        errors = []
        for step in range(min(self.max_tries, n)):
            j = (idx + step) % n
            try:
                return self.dataset[j]
            except DatasetError as e:
                self.num_skipped += 1
                self.skipped[j] = str(e)
                errors.append(e)
                logger.warning(
                    "skipping sample %d of %s: %s: %s [%d skipped so far]",
                    j,
                    type(self.dataset).__name__,
                    type(e).__name__,
                    e,
                    self.num_skipped,
                )
        raise DatasetError(
            f"{len(errors)} consecutive samples of {type(self.dataset).__name__} from index {idx} "
            f"failed to load; the data or its config is broken. Last error: {errors[-1]}"
        ) from errors[-1]
