"""The training loop's resume checks."""

from __future__ import annotations

import pytest

from hg_lmm.utils.checkpoint import CheckpointError, save_checkpoint
from tests.utils.test_checkpoint import _damaged, _trained_toy


class _Runner:
    def __init__(self, work_dir, resume, load_from):
        self.work_dir, self._resume, self._load_from = str(work_dir), resume, load_from


def test_resume_source_is_checked_before_mmengine_reads_it(tmp_path):
    from hg_lmm.engine.loops import check_resume_source

    torn = _damaged(tmp_path, "truncated pth")
    with pytest.raises(CheckpointError, match=f"cannot resume training: {torn} is truncated"):
        check_resume_source(_Runner(tmp_path, True, str(torn)))
    # Auto-resume (`resume=True`, no path) reads last_checkpoint; a missing file is named too.
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_8.pth"))
    with pytest.raises(CheckpointError, match="iter_8.pth does not exist"):
        check_resume_source(_Runner(tmp_path, True, None))
    good = save_checkpoint(_trained_toy(), tmp_path / "iter_8.pth")
    check_resume_source(_Runner(tmp_path, True, None))
    check_resume_source(_Runner(tmp_path, False, str(good)))  # load_from is checked as well
    check_resume_source(_Runner(tmp_path / "empty", False, None))  # a fresh run: nothing to do
