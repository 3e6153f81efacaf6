"""Storage faults in one sentence: a full, read-only, locked or failing data dir, what it hit, and what to do.

Every command reports a fault from the data dir (an `OSError` or a `sqlite3.OperationalError`) through
`storage_fault`, which turns it into a `StorageFault` whose message names what happened, where, how far the
command got and what to do, and whose exit code tells scripts which kind of trouble it was. Nothing here
decides to retry: a writer already waited SQLite's busy timeout before "locked" reaches it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path

# Exit codes (sysexits.h meanings). Bad usage or config stays 2 and any other refusal 1, so a script can tell
# "fix the command" from "fix the disk" from "try again later".
EXIT_DISK_FULL = 74  # EX_IOERR: no space, quota, I/O error
EXIT_READ_ONLY = 73  # EX_CANTCREAT: read-only file system or no permission to write
EXIT_LOCKED = 75  # EX_TEMPFAIL: another process holds the write lock; the same command later will work
EXIT_DAMAGED = 65  # EX_DATAERR: `check` found problems that remain

DISK_FULL, READ_ONLY, LOCKED, IO_ERROR = "disk full", "read-only", "locked", "I/O error"
EXIT_CODES = {DISK_FULL: EXIT_DISK_FULL, IO_ERROR: EXIT_DISK_FULL, READ_ONLY: EXIT_READ_ONLY, LOCKED: EXIT_LOCKED}

# The lock file `illustfeed run` holds (bot's run lock): its content is the holder's PID.
LOCK_FILENAME = "illustfeed.lock"

_OS_KINDS = {
    errno.ENOSPC: DISK_FULL,
    errno.EDQUOT: DISK_FULL,
    errno.EFBIG: DISK_FULL,
    errno.EIO: IO_ERROR,
    errno.EROFS: READ_ONLY,
    errno.EACCES: READ_ONLY,
    errno.EPERM: READ_ONLY,
}
# SQLite primary result codes (the low byte of the extended code).
_SQLITE_KINDS = {13: DISK_FULL, 10: IO_ERROR, 8: READ_ONLY, 5: LOCKED, 6: LOCKED}
# Older SQLite builds (or errors raised without a code) only tell by their message.
_SQLITE_MESSAGES = (
    ("disk is full", DISK_FULL),
    ("disk i/o error", IO_ERROR),
    ("readonly database", READ_ONLY),
    ("database is locked", LOCKED),
    ("database table is locked", LOCKED),
)


class StorageFault(Exception):
    """The data dir failed a command: `kind` is one of DISK_FULL, READ_ONLY, LOCKED, IO_ERROR.

    `where` names the file or folder; `progress` says how far the command got ("90 of 200 images stored");
    `during` names the step when it is not an ordinary write ("migrating the database schema from version 2
    to 3"); `holder_pid` is the PID of the process holding the data dir's lock when one does.
    """

    def __init__(
        self,
        kind: str,
        where: str | Path | None,
        reason: str = "",
        *,
        progress: str | None = None,
        during: str | None = None,
        busy_timeout_s: float | None = None,
        holder_pid: int | None = None,
    ):
        super().__init__(kind)
        self.kind, self.where, self.reason = kind, str(where) if where is not None else None, reason
        self.progress, self.during = progress, during
        self.busy_timeout_s, self.holder_pid = busy_timeout_s, holder_pid

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]

    def __str__(self) -> str:
        where = f" {self.where}" if self.where else ""
        step = f" while {self.during}" if self.during else ""
        progress = f": {self.progress}" if self.progress else ""
        if self.kind == DISK_FULL:
            what = f"disk full{step} writing{where}{progress}"
            todo = "free space and run the same command again (nothing is lost)"
        elif self.kind == IO_ERROR:
            what = f"I/O error{step} on{where} ({self.reason or 'the disk failed a read or write'}){progress}"
            todo = (
                "check the disk (dmesg, smartctl), then run `illustfeed check`; "
                "run the same command again once it is healthy (nothing stored is lost)"
            )
        elif self.kind == READ_ONLY:
            what = f"the data dir is read-only: cannot write{where}{step} ({self.reason or 'read-only'}){progress}"
            todo = (
                "remount it read-write or fix its permissions, then run the same command again; "
                "status, serve and check still work read-only"
            )
        else:
            holder = f" (PID {self.holder_pid} holds the data dir's {LOCK_FILENAME})" if self.holder_pid else ""
            waited = f" for {self.busy_timeout_s:g} s" if self.busy_timeout_s else ""
            what = f"database locked by another process{holder}{waited}{step}:{where}{progress}"
            todo = (
                "wait for it to finish (or stop it) and run the same command again (nothing is lost); "
                "[storage] busy_timeout_seconds sets how long to wait"
            )
        return f"{what}; {todo}"


def _os_kind(error: OSError) -> str | None:
    return _OS_KINDS.get(error.errno)


def sqlite_kind(error: sqlite3.Error) -> str | None:
    """DISK_FULL, READ_ONLY, LOCKED or IO_ERROR for a SQLite error that comes from the disk, else None."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _SQLITE_KINDS:
        return _SQLITE_KINDS[code & 0xFF]
    text = str(error).lower()
    for fragment, kind in _SQLITE_MESSAGES:
        if fragment in text:
            return kind
    return None


def storage_fault(
    error: BaseException,
    db_path: str | Path | None = None,
    *,
    busy_timeout_s: float | None = None,
    during: str | None = None,
) -> StorageFault | None:
    """The StorageFault an exception stands for, or None when it is not a fault of the disk or database.

    `db_path` names the database for SQLite errors (they do not carry a file name).
    """
    if isinstance(error, StorageFault):
        return error
    if isinstance(error, sqlite3.Error):
        kind = sqlite_kind(error)
        if kind is None:
            return None
        if kind == IO_ERROR and _nearly_full(db_path):
            kind = DISK_FULL  # SQLite says "disk I/O error" when it cannot grow its shared-memory file on a full disk
        return StorageFault(
            kind, db_path, str(error), during=during, busy_timeout_s=busy_timeout_s if kind == LOCKED else None
        )
    if isinstance(error, OSError):
        kind = _os_kind(error)
        if kind is None:
            return None
        if kind == IO_ERROR and _nearly_full(error.filename):
            kind = DISK_FULL
        return StorageFault(kind, error.filename, error.strerror or str(error), during=during)
    return None


# Below this much free space an I/O error is taken for what it almost surely is: a full disk.
NEARLY_FULL_BYTES = 1 << 20


def _nearly_full(path: str | Path | None) -> bool:
    if path is None:
        return False
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES


def lock_holder_pid(data_dir: str | Path) -> int | None:
    """The PID written in the data dir's lock file while a process holds that lock, else None.

    The file outlives its holder (the kernel drops the lock, not the file), so the PID counts only when the
    lock is really taken: a non-blocking shared lock that fails says so without disturbing the holder.
    """
    path = Path(data_dir) / LOCK_FILENAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            # This process's own lock (the runner's job meeting a writer elsewhere) names nobody else.
            return int(text) if text.isdigit() and int(text) != os.getpid() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def data_dir_writable(data_dir: str | Path) -> bool:
    """Whether files can be created in the data dir (False on a read-only mount, even for root)."""
    return os.access(data_dir, os.W_OK)
