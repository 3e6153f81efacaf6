"""The SQLite store: one database file plus blob folders under a data dir, and the queries every stage shares."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import sqlite_utils

from storage.blobs import BlobStore
from storage.errors import LOCKED, READ_ONLY, StorageFault, data_dir_writable, storage_fault
from storage.schema import SCHEMA_VERSION, SchemaTooNewError, migrate

log = logging.getLogger(__name__)

DB_FILENAME = "illustfeed.db"
# Networks whose account id outlives handle changes: a Bluesky DID stays when its handle (a domain) changes.
STABLE_ACCOUNT_IDS = frozenset({"bluesky"})
LABELS = ("illustration", "screenshot", "photo")
DEFAULT_BUSY_TIMEOUT_S = 30.0


class StoreError(ValueError):
    """A request the store cannot satisfy (unknown media, bad label, ambiguous reference)."""


# What classify writes when a stored file cannot be decoded: the only rejection a missing or damaged file
# causes, so the only one that the right bytes, written again, undo.
CLASSIFY_REJECT_PREFIX = "stored file cannot be decoded for classification:"


def restorable_rejection(reject_reason: str | None) -> bool:
    return (reject_reason or "").startswith(CLASSIFY_REJECT_PREFIX)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _connect_and_migrate(db_path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """Open the database in WAL mode and migrate it. Switching a new file to WAL can answer "database is
    locked" at once, without the busy handler, while another process does the same (seen with 8 concurrent
    first opens on a loaded machine), so the whole set-up is retried until the busy timeout; every step is
    idempotent and each migration is its own transaction."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in `transaction`), never implicit.
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        try:
            conn.row_factory = sqlite3.Row
            sqlite_utils.Database(conn).enable_wal()
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            migrate(conn)
            return conn
        except (sqlite3.OperationalError, StorageFault) as error:
            conn.close()
            fault = storage_fault(error)
            if fault is None or fault.kind != LOCKED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except BaseException:
            conn.close()
            raise


class Store:
    """One SQLite connection (WAL, foreign keys) and the blob stores of one data dir. One Store per thread."""

    def __init__(
        self,
        data_dir: Path,
        conn: sqlite3.Connection,
        *,
        read_only: bool = False,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ):
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / DB_FILENAME
        self.conn = conn
        self.read_only = read_only
        self.busy_timeout_s = busy_timeout_s
        self.db = sqlite_utils.Database(conn)
        self.blobs = BlobStore(self.data_dir / "media")
        self.derived = BlobStore(self.data_dir / "derived")
        self._transaction_depth = 0
        self._phash_ids = np.zeros(0, dtype=np.int64)
        self._phash_values = np.zeros(0, dtype=np.uint64)
        self._phash_max_id = 0
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls, data_dir: str | Path, *, read_only: bool | None = False, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ) -> "Store":
        """Open (creating and migrating as needed) the store of a data dir.

        `read_only`: False opens for writing; True opens the database read-only (it must exist and be
        migrated); None picks read-only when the data dir or database cannot be written (a read-only mount),
        so readers (status, serve, check) keep working there. Writers wait up to `busy_timeout_s` for another
        process's write lock, then fail with a StorageFault saying so.
        """
        data_dir = Path(data_dir)
        db_path = data_dir / DB_FILENAME
        if read_only is None:
            read_only = db_path.is_file() and not (data_dir_writable(data_dir) and os.access(db_path, os.W_OK))
        if read_only:
            return cls._open_read_only(data_dir, db_path)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            fault = storage_fault(error)
            if fault is not None:
                raise fault from error
            raise StoreError(f"cannot use data dir {data_dir}: {error.strerror or error}") from None
        try:
            conn = _connect_and_migrate(db_path, busy_timeout_s)
        except (sqlite3.Error, StorageFault) as error:
            fault = storage_fault(error, db_path, busy_timeout_s=busy_timeout_s)
            if fault is not None:
                fault.where = fault.where or str(db_path)
                if fault.kind == LOCKED:
                    fault.busy_timeout_s = busy_timeout_s
                if fault is error:
                    raise
                raise fault from error
            if not data_dir_writable(data_dir):  # "unable to open database file" in a folder it cannot write
                raise StorageFault(READ_ONLY, db_path, "cannot create the database or its journal") from error
            raise StoreError(f"cannot open database {db_path}: {error}") from None
        except SchemaTooNewError as error:
            raise StoreError(f"{db_path}: {error}") from None
        store = cls(data_dir, conn, busy_timeout_s=busy_timeout_s)
        try:
            store.blobs.remove_stale_temp_files()
            store.derived.remove_stale_temp_files()
        except OSError as error:  # housekeeping only: the command itself reports a disk that cannot be written
            log.warning("cannot remove stale temp files: %s", error)
        return store

    @classmethod
    def _open_read_only(cls, data_dir: Path, db_path: Path) -> "Store":
        if not db_path.is_file():
            raise StoreError(f"no database at {db_path}: run `illustfeed init` on a writable data dir first")
        uri = f"file:{urllib.parse.quote(str(db_path.resolve()))}?mode=ro"
        try:
            try:
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA user_version").fetchone()
            except sqlite3.OperationalError:
                # A WAL database whose -wal/-shm files are gone (closed cleanly) cannot be opened read-only on
                # a read-only mount; with no -wal file there is nothing uncommitted, so reading the file as
                # immutable sees the whole database. (A -wal file present means it opens without this.)
                if Path(f"{db_path}-wal").exists():
                    raise
                conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot open database {db_path} read-only: {error}") from None
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{db_path}: database schema version {version} is newer than this program's "
                f"{SCHEMA_VERSION}; upgrade illustfeed"
            )
        if version < SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{db_path} is read-only and at schema version {version} of {SCHEMA_VERSION}: "
                "run `illustfeed init` once with the data dir writable to migrate it"
            )
        return cls(data_dir, conn, read_only=True)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all. Nested use joins the outer transaction.

        Use `execute` inside; sqlite-utils' own write helpers commit on their own and must stay outside.
        """
        with self._lock:
            if self._transaction_depth:
                self._transaction_depth += 1
                try:
                    yield
                finally:
                    self._transaction_depth -= 1
                return
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                self._raise_as_fault(error)
            self._transaction_depth = 1
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException as error:
                # SQLite already rolled back after a full disk or I/O error; ROLLBACK again would fail with
                # "cannot rollback - no transaction is active" and hide the cause.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self._raise_as_fault(error)
            finally:
                self._transaction_depth = 0

    def fault(self, error: BaseException) -> StorageFault | None:
        """`error` as a StorageFault (SQLite's naming this store's database) when the disk or lock caused it."""
        fault = storage_fault(error, self.db_path, busy_timeout_s=self.busy_timeout_s)
        if fault is not None:
            fault.where = fault.where or str(self.db_path)
        return fault

    def _raise_as_fault(self, error: BaseException) -> None:
        fault = self.fault(error)
        if fault is None or fault is error:
            raise error
        raise fault from error

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Any = ()) -> list[dict]:
        return [dict(row) for row in self.conn.execute(sql, params)]

    def query_one(self, sql: str, params: Any = ()) -> dict | None:
        row = self.conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def scalar(self, sql: str, params: Any = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row is not None else None

    # Accounts and posts ------------------------------------------------------------------------------

    def upsert_account(
        self, source: str, handle: str, external_id: str | None = None, display_name: str | None = None
    ) -> int:
        """The account's row id, created or updated. On networks whose id outlives handle changes (a Bluesky
        DID), the row with that id is the account: a new handle renames it, so cursor, posts and follow state
        stay; a handle equal to the id (a DID followed before it was resolved) never replaces a real one."""
        if external_id and source in STABLE_ACCOUNT_IDS:
            with self.transaction():
                row = self.query_one(
                    "SELECT id, handle FROM accounts WHERE source = ? AND external_id = ? ORDER BY id LIMIT 1",
                    (source, external_id),
                )
                if row is not None:
                    if handle != external_id and row["handle"] != handle:
                        self._rename_account(row["id"], source, handle)
                    self.execute(
                        "UPDATE accounts SET display_name = COALESCE(?, display_name) WHERE id = ?",
                        (display_name, row["id"]),
                    )
                    return row["id"]
        self.execute(
            "INSERT INTO accounts (source, handle, external_id, display_name, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (source, handle) DO UPDATE SET "
            "external_id = COALESCE(excluded.external_id, external_id), "
            "display_name = COALESCE(excluded.display_name, display_name)",
            (source, handle, external_id, display_name, utc_now()),
        )
        return self.scalar("SELECT id FROM accounts WHERE source = ? AND handle = ?", (source, handle))

    def _rename_account(self, account_id: int, source: str, handle: str) -> None:
        """Give row `account_id` the handle `handle`, which another row may hold: a row without an id (followed
        by that handle before it was resolved) is merged into this one; a row of another account (the handle
        passed on to someone else) is renamed to its own id until it is resolved again."""
        other = self.query_one(
            "SELECT id, external_id, followed, followed_via FROM accounts WHERE source = ? AND handle = ?",
            (source, handle),
        )
        if other is not None and other["external_id"] and other["external_id"] != handle:
            self.execute("UPDATE accounts SET handle = external_id WHERE id = ?", (other["id"],))
        elif other is not None:
            self.execute("UPDATE posts SET account_id = ? WHERE account_id = ?", (account_id, other["id"]))
            self.execute(
                "UPDATE account_former_handles SET account_id = ? WHERE account_id = ?", (account_id, other["id"])
            )
            # A follow or unfollow given by the old placeholder is the owner's latest word about this account.
            if other["followed_via"] or not other["followed"]:
                self.execute(
                    "UPDATE accounts SET followed = ?, followed_via = COALESCE(?, followed_via) WHERE id = ?",
                    (other["followed"], other["followed_via"], account_id),
                )
            self.execute("DELETE FROM accounts WHERE id = ?", (other["id"],))
        old = self.scalar("SELECT handle FROM accounts WHERE id = ?", (account_id,))
        self.execute("UPDATE accounts SET handle = ? WHERE id = ?", (handle, account_id))
        self.execute("DELETE FROM account_former_handles WHERE source = ? AND handle = ?", (source, handle))
        if old != self.scalar("SELECT external_id FROM accounts WHERE id = ?", (account_id,)):
            # A config list may still name the old handle: it keeps meaning this account.
            self.execute(
                "INSERT OR REPLACE INTO account_former_handles (source, handle, account_id, renamed_at) "
                "VALUES (?, ?, ?, ?)",
                (source, old, account_id, utc_now()),
            )

    def former_handles(self, source: str) -> dict[str, str]:
        """Handles that accounts of `source` had before a rename -> the account's id on the network."""
        return {
            row["handle"]: row["external_id"]
            for row in self.query(
                "SELECT f.handle, a.external_id FROM account_former_handles f JOIN accounts a ON a.id = f.account_id "
                "WHERE f.source = ? AND a.external_id IS NOT NULL",
                (source,),
            )
        }

    def upsert_post(
        self, account_id: int, source: str, external_id: str, url: str | None, text: str | None, created_at: str | None
    ) -> tuple[int, bool]:
        """Returns (post id, whether it is new)."""
        existing = self.scalar("SELECT id FROM posts WHERE source = ? AND external_id = ?", (source, external_id))
        if existing is not None:
            return existing, False
        cursor = self.execute(
            "INSERT INTO posts (account_id, source, external_id, url, text, created_at, fetched_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account_id, source, external_id, url, text, created_at, utc_now()),
        )
        return cursor.lastrowid, True

    def link_post_media(
        self, post_id: int, media_id: int, position: int, alt_text: str | None, source_url: str | None
    ) -> bool:
        """Attach a media to a post; returns False when the link already existed."""
        cursor = self.execute(
            "INSERT OR IGNORE INTO post_media (post_id, media_id, position, alt_text, source_url) VALUES (?, ?, ?, ?, ?)",
            (post_id, media_id, position, alt_text, source_url),
        )
        return cursor.rowcount == 1

    # Media -------------------------------------------------------------------------------------------

    def media_by_sha256(self, sha256: str) -> dict | None:
        return self.query_one("SELECT * FROM media WHERE sha256 = ?", (sha256,))

    def near_duplicate_candidates(self, phash: int, max_distance: int) -> list[dict]:
        """Accepted media whose perceptual hash is within `max_distance` bits, nearest first."""
        if max_distance < 0:
            return []
        # Media rows are only ever added, so the hash index grows from the highest id seen; rows written
        # by other processes are picked up the same way.
        new_rows = self.conn.execute(
            "SELECT id, phash FROM media WHERE id > ? AND phash IS NOT NULL ORDER BY id", (self._phash_max_id,)
        ).fetchall()
        if new_rows:
            self._phash_ids = np.concatenate([self._phash_ids, np.array([r["id"] for r in new_rows], np.int64)])
            self._phash_values = np.concatenate(
                [self._phash_values, np.array([int(r["phash"], 16) for r in new_rows], np.uint64)]
            )
            self._phash_max_id = new_rows[-1]["id"]
        distances = np.bitwise_count(self._phash_values ^ np.uint64(phash))
        close = np.flatnonzero(distances <= max_distance)
        candidates = []
        for index in close[np.argsort(distances[close], kind="stable")]:
            row = self.query_one(
                "SELECT id, sha256, ext, width, height FROM media WHERE id = ? AND status = 'ok'",
                (int(self._phash_ids[index]),),
            )
            if row is not None:
                candidates.append(dict(row, distance=int(distances[index])))
        return candidates

    def insert_media(self, **fields: Any) -> int:
        """Insert a media row; if another writer stored the same sha256 meanwhile, return that row's id."""
        fields.setdefault("first_seen_at", utc_now())
        columns = ", ".join(fields)
        placeholders = ", ".join("?" for _ in fields)
        cursor = self.execute(
            f"INSERT INTO media ({columns}) VALUES ({placeholders}) ON CONFLICT (sha256) DO NOTHING",
            tuple(fields.values()),
        )
        if cursor.rowcount == 0:
            return self.scalar("SELECT id FROM media WHERE sha256 = ?", (fields["sha256"],))
        return cursor.lastrowid

    def restore_media(self, media_id: int) -> None:
        """A media's file was written again: it is no longer damaged, nor rejected because the file was bad."""
        self.execute("DELETE FROM damaged_media WHERE media_id = ?", (media_id,))
        self.execute(
            "UPDATE media SET status = 'ok', reject_reason = NULL WHERE id = ? AND status = 'rejected'"
            " AND reject_reason LIKE ?",
            (media_id, CLASSIFY_REJECT_PREFIX + "%"),
        )

    def damaged_count(self) -> int:
        return self.scalar("SELECT COUNT(*) FROM damaged_media")

    def media(self, media_id: int) -> dict:
        row = self.query_one("SELECT * FROM media WHERE id = ?", (media_id,))
        if row is None:
            raise StoreError(f"no media with id {media_id}")
        return row

    def media_path(self, media_id: int) -> Path:
        row = self.media(media_id)
        if row["status"] != "ok":
            raise StoreError(f"media {media_id} is {row['status']}: {row['reject_reason'] or 'no stored file'}")
        return self.blobs.path(row["sha256"], row["ext"])

    def resolve_media(self, reference: str | int) -> int:
        """A media id, or the sha256 (or a unique prefix of at least 6 hex digits) of its stored bytes."""
        text = str(reference).strip().lower()
        # ASCII digits only ("²".isdigit() is True) and within SQLite's integer range.
        is_number = text.isascii() and text.isdigit() and len(text) <= 18
        by_id = self.scalar("SELECT id FROM media WHERE id = ?", (int(text),)) if is_number else None
        by_prefix = []
        if len(text) >= 6 and all(c in "0123456789abcdef" for c in text):
            by_prefix = [
                row["id"] for row in self.query("SELECT id FROM media WHERE sha256 LIKE ? LIMIT 2", (text + "%",))
            ]
        if len(by_prefix) > 1:
            raise StoreError(f"sha256 prefix {reference!r} matches more than one media; give more digits")
        if by_id is not None and by_prefix and by_prefix[0] != by_id:
            raise StoreError(
                f"{reference!r} is both media id {by_id} and the sha256 prefix of media {by_prefix[0]}; "
                "give more sha256 digits"
            )
        if by_id is not None:
            return by_id
        if by_prefix:
            return by_prefix[0]
        if is_number and len(text) < 6:
            raise StoreError(f"no media with id {text}")
        raise StoreError(f"no media matches {reference!r} (give a media id or a sha256 prefix of 6+ digits)")

    # Labels ------------------------------------------------------------------------------------------

    def add_label(self, media_id: int, label: str, by: str, via: str) -> int:
        if label not in LABELS:
            raise StoreError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
        self.media(media_id)
        # The review queue is settled by bot.review.record_label, which wraps this in its transaction.
        cursor = self.execute(
            'INSERT INTO labels (media_id, label, "by", via, at) VALUES (?, ?, ?, ?, ?)',
            (media_id, label, by, via, utc_now()),
        )
        return cursor.lastrowid

    def current_label(self, media_id: int) -> dict | None:
        """The latest human label that was not undone. Indexed lookup: the `current_label` view groups every
        label and is for whole-table joins, not for one media."""
        return self.query_one(
            'SELECT media_id, label, "by", via, at FROM labels WHERE media_id = ? AND revoked_at IS NULL'
            " ORDER BY id DESC LIMIT 1",
            (media_id,),
        )

    def final_label(self, media_id: int) -> str | None:
        """The latest human label, else the latest prediction when it is not borderline (kept current in
        `media_verdict` by triggers)."""
        return self.scalar("SELECT final_label FROM media_verdict WHERE media_id = ?", (media_id,))

    def active_model(self) -> dict | None:
        return self.query_one("SELECT * FROM models WHERE active = 1")
