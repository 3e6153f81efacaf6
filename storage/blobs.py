"""Content-addressed blob files: `<root>/ab/cd/<sha256>.<ext>`, written atomically, rewritten only when damaged."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from storage.errors import storage_fault
from storage.files import atomic_write_bytes

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
EXT_PATTERN = re.compile(r"^[a-z0-9]{1,8}$")


class BlobError(ValueError):
    """A blob id or extension that cannot name a file in the store."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_blob_name(sha256: str, ext: str) -> None:
    # Both parts end up in a path: validating them here keeps callers (web, chat) free of traversal checks.
    if not SHA256_PATTERN.match(sha256):
        raise BlobError(f"not a sha256 hex digest: {sha256!r}")
    if not EXT_PATTERN.match(ext):
        raise BlobError(f"not a file extension: {ext!r}")


class BlobStore:
    """Files named by the sha256 of their bytes under one root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.temp_dir = self.root / ".tmp"

    def path(self, sha256: str, ext: str) -> Path:
        check_blob_name(sha256, ext)
        return self.root / sha256[:2] / sha256[2:4] / f"{sha256}.{ext}"

    def exists(self, sha256: str, ext: str) -> bool:
        return self.path(sha256, ext).is_file()

    def read(self, sha256: str, ext: str) -> bytes:
        return self.path(sha256, ext).read_bytes()

    def intact(self, sha256: str, ext: str, size: int | None) -> bool:
        """The blob's file exists and (when `size` is known) holds that many bytes."""
        try:
            actual = self.path(sha256, ext).stat().st_size
        except FileNotFoundError:
            return False
        return size is None or actual == size

    def put(self, data: bytes, ext: str) -> str:
        """Store `data` and return its sha256.

        An existing blob of the right size is left as it is (same name = same bytes); one of another size is
        damage (truncated, or replaced behind the store's back) and is written again. A disk fault is raised
        as a StorageFault naming the blob.
        """
        digest = sha256_hex(data)
        target = self.path(digest, ext)
        if self.intact(digest, ext, len(data)):
            return digest
        try:
            # The temp folder is under the same root (same filesystem) so the rename is atomic.
            atomic_write_bytes(target, data, temp_dir=self.temp_dir)
        except OSError as error:
            fault = storage_fault(error)
            if fault is None:
                raise
            fault.where = str(target)  # the file being stored, not the temp file that took the error
            raise fault from error
        return digest

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files a killed process left behind; returns how many.

        Only old ones: another live process (the runner beside a CLI import) may be writing a fresh one.
        """
        removed = 0
        if self.temp_dir.is_dir():
            cutoff = time.time() - older_than_s
            for stale in self.temp_dir.iterdir():
                try:
                    if stale.stat().st_mtime < cutoff:
                        stale.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed
