"""The SQLite store and blob files: schema, pragmas, transactions, atomic never-overwritten blobs."""
import sqlite3

import pytest

from storage import SCHEMA_VERSION, BlobError, SchemaTooNewError, Store, StoreError
from storage.blobs import BlobStore, sha256_hex


def test_new_store_has_schema_wal_and_foreign_keys(tmp_path):
    with Store.open(tmp_path / "d") as store:
        assert store.scalar("PRAGMA user_version") == SCHEMA_VERSION
        assert store.scalar("PRAGMA journal_mode") == "wal"
        assert store.scalar("PRAGMA foreign_keys") == 1
        tables = set(store.db.table_names())
        assert {"accounts", "posts", "media", "post_media", "predictions", "labels", "review_queue", "models",
                "features"} <= tables
        with pytest.raises(sqlite3.IntegrityError):
            store.execute("INSERT INTO post_media (post_id, media_id) VALUES (999, 999)")


def test_reopening_keeps_rows_and_does_not_migrate_twice(tmp_path):
    with Store.open(tmp_path / "d") as store:
        store.upsert_account("folder", "alice")
    with Store.open(tmp_path / "d") as store:
        assert store.scalar("SELECT COUNT(*) FROM accounts") == 1


def test_database_from_a_newer_program_is_refused(tmp_path):
    with Store.open(tmp_path / "d") as store:
        store.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNewError, match="newer"):
        Store.open(tmp_path / "d")


def test_transaction_rolls_back_everything_on_error(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.upsert_account("folder", "alice")
            with store.transaction():  # nested joins the outer one
                store.upsert_account("folder", "bob")
            raise RuntimeError("crash in the middle")
    assert store.scalar("SELECT COUNT(*) FROM accounts") == 0


def test_label_history_and_final_label(store):
    media_id = store.insert_media(sha256="a" * 64, status="ok", ext="png", width=1, height=1)
    assert store.final_label(media_id) is None
    store.execute(
        "INSERT INTO predictions (media_id, model_version, prob_illustration, prob_screenshot, prob_photo, label,"
        " confidence, margin, borderline, created_at) VALUES (?, 'v1', .9, .05, .05, 'illustration', .9, .85, 0, 'now')",
        (media_id,),
    )
    assert store.final_label(media_id) == "illustration"
    store.add_label(media_id, "photo", by="ann", via="cli")
    store.add_label(media_id, "screenshot", by="bob", via="discord")
    assert store.final_label(media_id) == "screenshot"
    assert store.scalar("SELECT COUNT(*) FROM labels WHERE media_id = ?", (media_id,)) == 2
    with pytest.raises(StoreError, match="unknown label 'drawing'"):
        store.add_label(media_id, "drawing", by="ann", via="cli")
    with pytest.raises(StoreError, match="no media with id 999"):
        store.add_label(999, "photo", by="ann", via="cli")


def test_resolve_media_by_id_and_sha_prefix(store):
    first = store.insert_media(sha256="abcdef" + "0" * 58, status="ok")
    store.insert_media(sha256="abcdef1" + "0" * 57, status="ok")
    assert store.resolve_media(str(first)) == first
    assert store.resolve_media("abcdef0") == first
    with pytest.raises(StoreError, match="more than one"):
        store.resolve_media("abcdef")
    with pytest.raises(StoreError, match="no media matches"):
        store.resolve_media("zzz")


def test_blob_put_is_content_addressed_and_never_overwrites(tmp_path):
    blobs = BlobStore(tmp_path / "media")
    digest = blobs.put(b"hello", "png")
    path = blobs.path(digest, "png")
    assert digest == sha256_hex(b"hello")
    assert path.relative_to(tmp_path / "media").parts[:2] == (digest[:2], digest[2:4])
    assert path.read_bytes() == b"hello"
    mtime = path.stat().st_mtime_ns
    assert blobs.put(b"hello", "png") == digest
    assert path.stat().st_mtime_ns == mtime
    assert not list(path.parent.glob(".tmp-*"))


@pytest.mark.parametrize("sha, ext", [("../../etc/passwd", "png"), ("a" * 64, "p/ng"), ("A" * 64, "png")])
def test_blob_names_are_validated(tmp_path, sha, ext):
    with pytest.raises(BlobError):
        BlobStore(tmp_path).path(sha, ext)


def test_concurrent_first_opens_migrate_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def open_and_count(_):
        with Store.open(tmp_path / "d") as store:
            return store.scalar("PRAGMA user_version")

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_and_count, range(8))) == [SCHEMA_VERSION] * 8


def test_only_old_temp_files_are_cleaned_up(tmp_path):
    import os
    blobs = BlobStore(tmp_path)
    folder = tmp_path / "ab" / "cd"
    folder.mkdir(parents=True)
    (folder / ".tmp-fresh").write_bytes(b"being written")
    old = folder / ".tmp-old"
    old.write_bytes(b"left by a killed process")
    os.utime(old, (0, 0))
    assert blobs.remove_stale_temp_files() == 1
    assert (folder / ".tmp-fresh").exists() and not old.exists()
