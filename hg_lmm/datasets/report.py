"""Data problems met while training, reported once each and summed up at the end.

A training set is read for many epochs, usually in DataLoader worker processes that are started
afresh every epoch, so a warning logged where the problem is found repeats every epoch, and no
process sees all of them. Instead, whoever finds a problem (`SkipBadSamples` for a sample that
cannot be loaded, `TokenizePieces` for a phrase it drops) attaches a `DataNote` to the sample it
returns (`sample.extra["data_notes"]`). The note travels with the batch to the main process,
where `DataReport` (driven by `hg_lmm.engine.hooks.DataReportHook`) logs each distinct problem
once and writes a summary with counts.

Outside DataLoader workers the finder logs the first occurrence itself (and marks the note as
logged), so code that reads a dataset directly still sees every problem once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

NOTES_KEY = "data_notes"

# kind -> how the summary describes it.
KINDS = {
    "skipped_sample": "samples could not be loaded and were replaced by the next good one",
    "dropped_phrase": "phrases were dropped because they encode to no token",
    "empty_mask": "phrases were dropped because their ground-truth mask is empty",
}


@dataclass(frozen=True)
class DataNote:
    """One data problem.

    Fields:
      kind: a `KINDS` key.
      key: names the sample or phrase, the same in every epoch and process.
      message: what is wrong (file, sample, fix).
      logged: whether the process that found it already logged it.
    """

    kind: str
    key: str
    message: str
    logged: bool = False


def in_worker() -> bool:
    """Whether this code runs in a DataLoader worker process."""
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def attach_note(sample: Any, note: DataNote) -> None:
    """Append `note` to `sample.extra["data_notes"]` (samples without `extra` carry none)."""
    extra = getattr(sample, "extra", None)
    if isinstance(extra, dict):
        extra.setdefault(NOTES_KEY, []).append(note)


def sample_notes(sample: Any) -> list[DataNote]:
    """The notes a sample carries."""
    extra = getattr(sample, "extra", None)
    return list(extra.get(NOTES_KEY, ())) if isinstance(extra, dict) else []


class DataReport:
    """Counts notes (all of them, and distinct keys per kind); logs each distinct one once."""

    def __init__(self) -> None:
        self.times: Counter[str] = Counter()
        self.distinct: dict[str, dict[str, str]] = {}

    def add(self, note: DataNote, log: Callable[[str], Any] | None = None) -> None:
        """Count `note`; log it (with `log`, default this module's logger) if it is the first of
        its key and was not logged where it was found."""
        self.times[note.kind] += 1
        seen = self.distinct.setdefault(note.kind, {})
        if note.key in seen:
            return
        seen[note.key] = note.message
        if not note.logged:
            (log or logger.warning)(f"{note.message} ({note.kind}; reported once)")

    @classmethod
    def merged(cls, reports: list[DataReport]) -> DataReport:
        """One report over several (the ranks of a run): counts add up, and a sample or phrase
        that several ranks met counts once among the distinct ones."""
        total = cls()
        for report in reports:
            total.times.update(report.times)
            for kind, seen in report.distinct.items():
                total.distinct.setdefault(kind, {}).update(seen)
        return total

    def summary(self, scope: str = "this process") -> str | None:
        """One line per kind, e.g. '4 samples could not be loaded ... (24 times in all)'; None
        when there was no problem. `scope` names whose problems these are."""
        lines = []
        for kind, seen in self.distinct.items():
            what = KINDS.get(kind, kind)
            lines.append(f"{len(seen)} {what} ({self.times[kind]} times in all)")
        if not lines:
            return None
        return f"data report of {scope}: " + "; ".join(lines)


__all__ = [
    "KINDS",
    "NOTES_KEY",
    "DataNote",
    "DataReport",
    "attach_note",
    "in_worker",
    "sample_notes",
]
