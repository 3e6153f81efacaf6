"""Atomic file writes: temp file, fsync, rename, fsync of the folder. A crash leaves the old file or the new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], None], temp_dir: Path | None = None) -> None:
    """Create or replace `path` with what `write(stream)` writes; never leaves a partial `path`.

    `temp_dir` must be on the same filesystem as `path` (default: its folder) so the rename is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(temp_dir) if temp_dir is not None else path.parent
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix="tmp-", dir=temp_dir)
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # The rename is durable only once the folder's entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: Path, data: bytes, temp_dir: Path | None = None) -> None:
    atomic_write(path, lambda stream: stream.write(data), temp_dir)
