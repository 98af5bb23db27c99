"""Atomic writes, the start-up write check and content hashes."""

from __future__ import annotations

import json
import os

import pytest

from hg_lmm.utils.files import (
    NotWritableError,
    atomic_open,
    default_file_mode,
    require_writable_dir,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)


def test_atomic_write_replaces_whole_file_with_plain_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_bytes_atomic(path, b"first")
    write_bytes_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert path.stat().st_mode & 0o777 == default_file_mode()
    assert os.listdir(path.parent) == ["out.json"]


def test_atomic_json_writer_keeps_the_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "sub" / "pred.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    # A failing dump leaves the previous file intact and no temporary file behind.
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["pred.json"]


def test_files_get_the_umask_permissions_not_0600(tmp_path):
    previous = os.umask(0o022)
    default_file_mode.cache_clear()
    try:
        write_bytes_atomic(tmp_path / "results.json", b"{}")
        assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644  # mkstemp gives 0600
    finally:
        os.umask(previous)
        default_file_mode.cache_clear()


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "iter_4.pth"
    path.write_bytes(b"complete checkpoint")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, "wb") as handle:
            handle.write(b"half of a new")
            raise KeyboardInterrupt  # what a kill between two writes would leave
    assert path.read_bytes() == b"complete checkpoint"
    assert os.listdir(tmp_path) == ["iter_4.pth"]


def test_unwritable_dir_is_named_with_its_flag(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(NotWritableError, match=r"cannot write to .*a_file/out.*--work-dir"):
        require_writable_dir(blocker / "out", "--work-dir")
    assert require_writable_dir(tmp_path / "new" / "dir", "--work-dir").is_dir()
    assert os.listdir(tmp_path / "new" / "dir") == []  # the probe file is gone


def test_sha256_file(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert sha256_file(tmp_path / "a").startswith("ba7816bf8f01cfea")
