"""Skipping undecodable samples, loudly: each bad sample is reported once, with counts."""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import Dataset

from hg_lmm.datasets.errors import DatasetError
from hg_lmm.datasets.report import DataNote, attach_note, in_worker

logger = logging.getLogger(__name__)


class SkipBadSamples(Dataset):
    """Wraps a dataset; a sample that raises a DatasetError is replaced by the next good one.

    Arguments:
      dataset: the dataset to wrap (its errors must derive from DatasetError).
      max_tries: how many consecutive indices to try before giving up; a run of failures that
        long means the data or the config is broken, which must stop the run.

    Each bad sample is reported once, not once per epoch: the replacement sample carries a
    `DataNote` (see `hg_lmm.datasets.report`) that the training run's `DataReportHook` logs the
    first time and counts in its end-of-training summary. Read outside DataLoader workers, the
    first failure of each index is also logged here. `num_skipped` (every skip) and `skipped`
    (index -> message) hold the counts of this process; with DataLoader workers each worker
    keeps its own.
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
        errors: list[DatasetError] = []
        notes: list[DataNote] = []
        for step in range(min(self.max_tries, n)):
            j = (idx + step) % n
            try:
                sample = self.dataset[j]
            except DatasetError as e:
                errors.append(e)
                notes.append(self._note(j, e))
                continue
            for note in notes:
                attach_note(sample, note)
            return sample
        raise DatasetError(
            f"{len(errors)} consecutive samples of {type(self.dataset).__name__} from index {idx} "
            f"failed to load; the data or its config is broken. Last error: {errors[-1]}"
        ) from errors[-1]

    def _note(self, j: int, error: DatasetError) -> DataNote:
        self.num_skipped += 1
        first = j not in self.skipped
        self.skipped[j] = str(error)
        message = (
            f"skipping sample {j} of {type(self.dataset).__name__}: {type(error).__name__}: {error}"
        )
        log = first and not in_worker()
        if log:
            logger.warning("%s [%d distinct samples skipped so far]", message, len(self.skipped))
        return DataNote("skipped_sample", f"sample {j}", message, logged=log)
