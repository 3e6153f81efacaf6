"""Faults for storage tests: a small tmpfs, a read-only bind mount, and SQLite errors injected at chosen SQL.

Mounting needs root (CAP_SYS_ADMIN); without it the tests that need a mount are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest


def _mount(*arguments: str) -> None:
    result = subprocess.run(["mount", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here (needs root in a namespace that allows it): {result.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of `size_bytes` mounted on `path` (a real ENOSPC once it is full)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


def grow_tmpfs(path: Path, size_bytes: int) -> None:
    """What the user does after "free space": the same mount, bigger."""
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True)


@contextlib.contextmanager
def read_only_view(source: Path, view: Path) -> Iterator[Path]:
    """`source` seen read-only at `view` (a read-only bind mount: refused even to root, with EROFS)."""
    view.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(view))
    try:
        result = subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot remount a bind mount read-only: {result.stderr.strip()}")
        yield view
    finally:
        _umount(view)


def fill(path: Path, leave_bytes: int = 0) -> Path:
    """Fill the filesystem holding `path` with one file until `leave_bytes` (rounded to blocks) stay free."""
    import os

    filler = path / "filler"
    stats = os.statvfs(path)
    free = stats.f_bavail * stats.f_frsize - leave_bytes
    with open(filler, "wb") as stream:
        block = b"\0" * 65536
        while free > 0:
            try:
                written = stream.write(block[: min(len(block), free)])
                stream.flush()
            except OSError:
                break
            free -= written
    return filler


class FaultyConnection(sqlite3.Connection):
    """A real SQLite connection whose `execute` raises where `fail_when(sql)` says, as a full disk would."""

    fail_when: Callable[[str], bool] = staticmethod(lambda sql: False)
    error: str = "database or disk is full"

    def execute(self, sql, *args):
        if type(self).fail_when(sql):
            raise sqlite3.OperationalError(self.error)
        return super().execute(sql, *args)


def inject_sqlite_fault(
    monkeypatch, fail_when: Callable[[str], bool], error: str = "database or disk is full"
) -> type[FaultyConnection]:
    """Every connection opened from now on (in this process) fails its SQL where `fail_when` says."""
    faulty = type("Faulty", (FaultyConnection,), {"fail_when": staticmethod(fail_when), "error": error})
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        kwargs.setdefault("factory", faulty)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return faulty


def fail_times(times: int, matches: Callable[[str], bool]) -> Callable[[str], bool]:
    """A `fail_when` that fails the first `times` matching statements, then lets them through."""
    left = [times]

    def fail_when(sql: str) -> bool:
        if left[0] > 0 and matches(sql):
            left[0] -= 1
            return True
        return False

    return fail_when


def fail_nth(n: int, matches: Callable[[str], bool]) -> Callable[[str], bool]:
    """A `fail_when` that fails only the `n`-th matching statement."""
    seen = [0]

    def fail_when(sql: str) -> bool:
        if matches(sql):
            seen[0] += 1
            return seen[0] == n
        return False

    return fail_when


def integrity(db_path: Path) -> str:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
