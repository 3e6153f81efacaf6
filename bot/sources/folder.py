"""The embedded default source: a local folder, each subfolder an account, each file a post with one image."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from bot.sources.records import MediaRef, Post
from bot.sources.base import FetchError, MediaRefused

SOURCE_NAME = "folder"


class FolderSource:
    """Walks `root/<account>/**/<file>`; files directly under `root` belong to `default_account`.

    A post id is the file's path relative to its account folder plus the hash of its bytes, so a file
    replaced by different bytes is a new post while re-importing the same file adds nothing.
    """

    name = SOURCE_NAME

    def __init__(
        self, root: str | Path, default_account: str = "inbox", account: str | None = None, max_bytes: int | None = None
    ):
        self.root = Path(root)
        self.default_account = default_account
        self.fixed_account = account
        self.max_bytes = max_bytes

    def files(self) -> list[tuple[str, Path]]:
        """(account, file) pairs in a stable order; hidden files and folders are skipped."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder source: {self.root} is not a directory")
        found = []
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if self.fixed_account is not None:
                account = self.fixed_account
            elif len(relative.parts) > 1:
                account = relative.parts[0]
            else:
                account = self.default_account
            found.append((account, path))
        return found

    def post_for(self, account: str, path: Path) -> Post:
        stat = path.stat()
        fingerprint = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        created = datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc).isoformat(timespec="seconds")
        return Post(
            source=SOURCE_NAME,
            account=account,
            post_id=f"{account}/{path.relative_to(self.root).as_posix()}#{fingerprint}",
            url=path.resolve().as_uri(),
            text=path.stem,
            created_at=created,
            media=(MediaRef(url=str(path), kind="photo"),),
        )

    def posts(self) -> Iterator[Post]:
        for account, path in self.files():
            yield self.post_for(account, path)

    def fetch(self, ref: MediaRef) -> bytes:
        path = Path(ref.url)
        try:
            size = path.stat().st_size
            if self.max_bytes is not None and size > self.max_bytes:
                raise MediaRefused(f"file is {size} bytes, over the limit of {self.max_bytes} bytes")
            return path.read_bytes()
        except OSError as error:
            raise FetchError(f"cannot read {path}: {error.strerror or error}") from None
