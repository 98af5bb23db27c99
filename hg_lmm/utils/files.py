"""File helpers shared by training and evaluation: atomic writes (bytes and JSON), a start-up check
that an output folder is writable, and content hashes.

Atomic means readers (a resumed run, another process) see either the old file or the complete new
one, never a torn one: the data goes to a temporary file in the same folder (so the final
`os.replace` stays on one file system), is flushed to disk, and then replaces the target. Files get
the permissions a plain `open()` would give (0644 under the usual umask 022), not the 0600 of
`tempfile.mkstemp`, so results can be read by the rest of a group.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class NotWritableError(OSError):
    """An output folder cannot be created or written to; the message names it and the flag."""


@functools.lru_cache(maxsize=1)
def default_file_mode() -> int:
    """0o666 minus the process umask, read once (Linux reports it in /proc; elsewhere it can only
    be read by setting it, which is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on a clean exit it replaces `path` atomically.

    Arguments:
      path: the final file (its folder is created).
      mode: "wb" (bytes) or "w" (UTF-8 text).

    On an exception (or a kill) the temporary file is removed (or left as a hidden `.NAME.*.tmp`,
    which nothing reads) and `path` keeps its previous content.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        kwargs = {"encoding": "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """Write `obj` as JSON to `path` atomically (see `atomic_open`), e.g. a prediction or results
    file: an interrupted evaluation never leaves a truncated one behind."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent)


def require_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create `path` if needed and check that a file can be written in it; returns it.

    Called at start-up by every CLI that writes results, so that a run never computes for hours and
    then fails while saving. Raises `NotWritableError` naming the folder and `flag` (the CLI
    option that sets it).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check.", suffix=".tmp"):
            pass
    except OSError as error:
        raise NotWritableError(
            f"cannot write to {folder} ({error.strerror or error}); pass a writable folder "
            f"with {flag}"
        ) from error
    return folder


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content (read in 4 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "NotWritableError",
    "atomic_open",
    "default_file_mode",
    "require_writable_dir",
    "sha256_file",
    "write_bytes_atomic",
    "write_json_atomic",
]
