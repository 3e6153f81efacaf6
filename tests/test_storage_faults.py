"""The store under real faults: a full tmpfs, a full disk at COMMIT and mid-migration, a locked database, a
read-only mount. Each says what happened in one line, keeps what was stored, and works again once fixed."""

from __future__ import annotations

import errno
import os
import sqlite3
import time

import pytest

from storage import SCHEMA_VERSION, Store, StorageFault, sha256_hex, storage_fault
from storage.blobs import BlobStore
from storage.errors import (
    DISK_FULL,
    EXIT_DISK_FULL,
    EXIT_LOCKED,
    EXIT_READ_ONLY,
    LOCKED,
    READ_ONLY,
    lock_holder_pid,
)
from storage.schema import MIGRATIONS, split_statements
from tests.storage_faults import (
    fail_times,
    fill,
    grow_tmpfs,
    inject_sqlite_fault,
    integrity,
    read_only_view,
    small_tmpfs,
)


def add_media(store: Store, count: int, start: int = 0) -> list[str]:
    """`count` media rows with real blobs (distinct bytes); returns their sha256."""
    digests = []
    for index in range(start, start + count):
        data = f"media {index} ".encode() * 50
        digest = store.blobs.put(data, "png")
        with store.transaction():
            store.insert_media(sha256=digest, ext="png", mime="image/png", bytes=len(data), status="ok")
        digests.append(digest)
    return digests


def test_faults_map_to_one_sentence_and_their_exit_code(tmp_path):
    full = storage_fault(OSError(errno.ENOSPC, "No space left on device", "data/media/ab/cd/x.png"))
    assert full.kind == DISK_FULL and full.exit_code == EXIT_DISK_FULL
    assert str(full).startswith("disk full writing data/media/ab/cd/x.png; free space and run the same command")
    read_only = storage_fault(sqlite3.OperationalError("attempt to write a readonly database"), "data/illustfeed.db")
    assert read_only.kind == READ_ONLY and read_only.exit_code == EXIT_READ_ONLY
    assert str(read_only).startswith("the data dir is read-only: cannot write data/illustfeed.db")
    locked = storage_fault(sqlite3.OperationalError("database is locked"), "data/illustfeed.db", busy_timeout_s=30)
    assert locked.kind == LOCKED and locked.exit_code == EXIT_LOCKED
    assert str(locked).startswith("database locked by another process for 30 s: data/illustfeed.db; wait")
    assert "\n" not in str(full) + str(read_only) + str(locked)
    # Not the disk's fault: left to the caller's own handling.
    assert storage_fault(sqlite3.OperationalError("no such table: media")) is None
    assert storage_fault(FileNotFoundError(errno.ENOENT, "No such file or directory", "inbox/a.png")) is None
    assert storage_fault(ValueError("bad")) is None


@pytest.mark.slow
def test_blob_write_on_a_full_tmpfs_names_the_blob_and_leaves_no_partial_file(tmp_path):
    with small_tmpfs(tmp_path / "disk", 256 * 1024) as disk:
        blobs = BlobStore(disk / "media")
        stored = []
        with pytest.raises(StorageFault) as caught:
            for index in range(100):
                data = os.urandom(20_000) + bytes([index])
                blobs.put(data, "png")
                stored.append(data)
        fault = caught.value
        assert fault.kind == DISK_FULL and fault.exit_code == EXIT_DISK_FULL
        failed_blob = blobs.path(sha256_hex(data), "png")
        assert str(fault).startswith(f"disk full writing {failed_blob}; free space and run the same command again")
        assert not failed_blob.exists() and list(blobs.temp_dir.iterdir()) == []
        assert len(stored) >= 5
        for data in stored:  # everything written before the fault is whole
            assert blobs.read(sha256_hex(data), "png") == data
        grow_tmpfs(disk, 4 * 1024 * 1024)
        assert blobs.put(data, "png") == sha256_hex(data) and blobs.read(sha256_hex(data), "png") == data


def test_a_full_disk_at_commit_rolls_back_says_so_and_the_retry_commits(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    with Store.open(data_dir) as store:
        kept = add_media(store, 3)
    inject_sqlite_fault(monkeypatch, fail_times(1, lambda sql: sql == "COMMIT"))
    with Store.open(data_dir) as store:
        with pytest.raises(StorageFault) as caught:
            add_media(store, 1, start=3)
        assert str(caught.value).startswith(f"disk full writing {data_dir / 'illustfeed.db'}; free space")
        assert caught.value.exit_code == EXIT_DISK_FULL
        assert not store.conn.in_transaction
        assert [row["sha256"] for row in store.query("SELECT sha256 FROM media ORDER BY id")] == kept
        add_media(store, 1, start=3)  # the same write again, the disk has room now
        assert store.scalar("SELECT COUNT(*) FROM media") == 4
    assert integrity(data_dir / "illustfeed.db") == "ok"


def database_at_version(data_dir, version: int) -> None:
    """A database as an older illustfeed left it: the first `version` migrations, with a few media rows."""
    data_dir.mkdir(parents=True)
    conn = sqlite3.connect(data_dir / "illustfeed.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for migration in MIGRATIONS[:version]:
        for statement in split_statements(migration):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    for index in range(20):
        conn.execute(
            "INSERT INTO media (sha256, ext, bytes, status, first_seen_at) VALUES (?, 'png', 10, 'ok', 'x')",
            (f"{index:064x}",),
        )
    conn.close()


def test_a_full_disk_during_migration_is_reported_as_such_and_the_migration_resumes(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    database_at_version(data_dir, 2)
    inject_sqlite_fault(monkeypatch, fail_times(1, lambda sql: sql.startswith("CREATE TABLE thumbnails")))
    with pytest.raises(StorageFault) as caught:
        Store.open(data_dir)
    message = str(caught.value)
    assert message.startswith(
        f"disk full while migrating the database schema from version 2 to 3 of "
        f"{SCHEMA_VERSION} (it resumes on the next start) writing {data_dir / 'illustfeed.db'}"
    )
    assert "cannot rollback" not in message and caught.value.exit_code == EXIT_DISK_FULL
    conn = sqlite3.connect(data_dir / "illustfeed.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2  # the failed step left nothing half-done
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'media_verdict'").fetchone()[0] == 0
    conn.close()
    with Store.open(data_dir) as store:  # the next start resumes
        assert store.scalar("PRAGMA user_version") == SCHEMA_VERSION
        assert store.scalar("SELECT COUNT(*) FROM media") == 20
    assert integrity(data_dir / "illustfeed.db") == "ok"


@pytest.mark.slow
def test_a_real_full_tmpfs_during_migration_keeps_the_old_schema_and_resumes(tmp_path):
    with small_tmpfs(tmp_path / "disk", 8 * 1024 * 1024) as disk:
        data_dir = disk / "data"
        database_at_version(data_dir, 2)
        conn = sqlite3.connect(data_dir / "illustfeed.db")
        # Enough rows that migration 3 (media_verdict filled from every prediction, and indexed) needs pages.
        conn.executemany(
            "INSERT INTO media (sha256, ext, bytes, status, first_seen_at) VALUES (?, 'png', 10, 'ok', ?)",
            [(f"{index:064x}", "y" * 300) for index in range(100, 3000)],
        )
        conn.execute(
            "INSERT INTO predictions (media_id, model_version, prob_illustration, prob_screenshot,"
            " prob_photo, label, confidence, margin, borderline, created_at)"
            " SELECT id, 'm', 0.5, 0.3, 0.2, 'illustration', 0.5, 0.2, 0, first_seen_at FROM media"
        )
        conn.commit()
        # Another process (the runner, a feed server) has the database open: its shared-memory file exists,
        # so the disk fills while the migration writes, not before.
        conn.execute("SELECT COUNT(*) FROM media").fetchone()
        filler = fill(disk, leave_bytes=16 * 1024)
        with pytest.raises(StorageFault) as caught:
            Store.open(data_dir)
        conn.close()
        assert str(caught.value).startswith("disk full while migrating the database schema from version 2 to 3")
        assert caught.value.exit_code == EXIT_DISK_FULL
        filler.unlink()
        with Store.open(data_dir) as store:
            assert store.scalar("PRAGMA user_version") == SCHEMA_VERSION
            assert store.scalar("SELECT COUNT(*) FROM media") == 20 + 2900
            assert store.scalar("SELECT COUNT(*) FROM media_verdict") == 2920
        assert integrity(data_dir / "illustfeed.db") == "ok"


def test_a_writer_waits_the_busy_timeout_then_says_the_database_is_locked(tmp_path):
    data_dir = tmp_path / "data"
    with Store.open(data_dir) as store:
        add_media(store, 2)
    holder = sqlite3.connect(data_dir / "illustfeed.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # A reader still opens (WAL), and only the write waits.
        with Store.open(data_dir, busy_timeout_s=0.3) as store:
            assert store.scalar("SELECT COUNT(*) FROM media") == 2
            started = time.monotonic()
            with pytest.raises(StorageFault) as caught:
                add_media(store, 1, start=2)
            waited = time.monotonic() - started
        assert 0.25 <= waited < 5
        assert str(caught.value).startswith(
            f"database locked by another process for 0.3 s: {data_dir / 'illustfeed.db'}; wait for it"
        )
        assert caught.value.exit_code == EXIT_LOCKED
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store.open(data_dir) as store:  # the same write again, now the lock is free
        add_media(store, 1, start=2)
        assert store.scalar("SELECT COUNT(*) FROM media") == 3
    assert integrity(data_dir / "illustfeed.db") == "ok"
    assert lock_holder_pid(data_dir) is None  # no `illustfeed run` holds the data dir


def test_read_only_open_reads_and_refuses_writes_with_the_sentence(tmp_path):
    data_dir = tmp_path / "data"
    with Store.open(data_dir) as store:
        digests = add_media(store, 2)
    with Store.open(data_dir, read_only=True) as store:
        assert store.read_only
        assert [row["sha256"] for row in store.query("SELECT sha256 FROM media ORDER BY id")] == digests
        with pytest.raises(StorageFault) as caught:
            add_media(store, 1, start=5)
        assert caught.value.kind == READ_ONLY and caught.value.exit_code == EXIT_READ_ONLY


def test_a_read_only_mount_opens_for_reading_and_writers_get_the_sentence(tmp_path):
    data_dir = tmp_path / "data"
    with Store.open(data_dir) as store:
        digests = add_media(store, 3)
    with read_only_view(data_dir, tmp_path / "ro") as view:
        with Store.open(view, read_only=None) as store:  # what status, serve and check ask for
            assert store.read_only
            assert [row["sha256"] for row in store.query("SELECT sha256 FROM media ORDER BY id")] == digests
            assert store.scalar("PRAGMA integrity_check") == "ok"
        with pytest.raises(StorageFault) as caught:
            Store.open(view)  # a writer
        assert caught.value.kind == READ_ONLY and caught.value.exit_code == EXIT_READ_ONLY
        assert str(caught.value).startswith(f"the data dir is read-only: cannot write {view / 'illustfeed.db'}")
        with pytest.raises(StorageFault) as caught:
            BlobStore(view / "media").put(b"new bytes", "png")
        assert caught.value.kind == READ_ONLY
    with Store.open(data_dir) as store:  # nothing was lost, and the writable path still writes
        assert store.scalar("SELECT COUNT(*) FROM media") == 3
        add_media(store, 1, start=3)
