"""Atomic file replacement: temp file in the same directory, fsync, rename, fsync the directory.

A crash at any point leaves either the old file or the new one, never a mix."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from keybroker.errors import StoreError, StoreFull

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``. Raises StoreFull (disk full) or StoreError; on failure the
    old file is untouched and no temporary file is left behind."""
    parent = path.parent
    tmp_name: str | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
        tmp_name = None
        with contextlib.suppress(OSError):  # not every platform can fsync a directory
            dfd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreFull(f"the disk is full: {path} was not changed") from exc
        raise StoreError(f"cannot write {path}: {exc.strerror}; the file was not changed") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
