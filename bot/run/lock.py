"""One `illustfeed run` per data dir: an exclusive fcntl lock on `<data_dir>/illustfeed.lock` holding the PID."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from storage.errors import LOCK_FILENAME  # storage reads the holder's PID for its "locked" message


class DataDirLocked(RuntimeError):
    """Another process holds the data dir's lock; the message names the lock file and that process's PID."""


class DataDirLock:
    """Held from `acquire()` until `release()` or process exit; the kernel drops it if the process dies,
    so a crash never leaves a stale lock behind (the PID in the file is only information)."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> "DataDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"another illustfeed process (PID {holder}) is running on this data dir: "
                f"{self.path.resolve()} is locked; stop it first or use another data_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # Empty the file first so a reader never sees a PID that no longer holds the lock.
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DataDirLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
