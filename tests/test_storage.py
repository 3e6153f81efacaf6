"""The SQLite store and blob files: schema, pragmas, transactions, atomic never-overwritten blobs."""

import sqlite3

import pytest

from storage import SCHEMA_VERSION, BlobError, Store, StoreError
from storage.blobs import BlobStore, sha256_hex


def test_new_store_has_schema_wal_and_foreign_keys(tmp_path):
    with Store.open(tmp_path / "d") as store:
        assert store.scalar("PRAGMA user_version") == SCHEMA_VERSION
        assert store.scalar("PRAGMA journal_mode") == "wal"
        assert store.scalar("PRAGMA foreign_keys") == 1
        tables = set(store.db.table_names())
        assert {
            "accounts",
            "posts",
            "media",
            "post_media",
            "predictions",
            "labels",
            "review_queue",
            "models",
            "features",
        } <= tables
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
    with pytest.raises(StoreError, match="newer"):
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


def test_resolve_media_refuses_a_reference_that_is_both_an_id_and_a_prefix(store):
    store.insert_media(sha256="a" * 64, status="ok")
    store.insert_media(sha256="000001" + "f" * 58, status="ok")
    assert store.resolve_media("2") == 2
    with pytest.raises(StoreError, match="both media id 1 and the sha256 prefix of media 2"):
        store.resolve_media("000001")  # media 1 exists, and media 2's sha256 starts with 000001


def test_same_sha_inserted_by_two_writers_keeps_one_row(store, tmp_path):
    other = Store.open(store.data_dir)
    try:
        first = store.insert_media(sha256="c" * 64, status="ok")
        assert other.insert_media(sha256="c" * 64, status="ok") == first
    finally:
        other.close()
    assert store.scalar("SELECT COUNT(*) FROM media") == 1


def test_unusable_data_dir_or_database_is_a_store_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="cannot use data dir"):
        Store.open(tmp_path / "afile")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/illustfeed.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        Store.open(tmp_path / "bad")


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
    assert not list(blobs.temp_dir.iterdir())


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
    folder = blobs.temp_dir
    folder.mkdir(parents=True)
    (folder / "tmp-fresh").write_bytes(b"being written")
    old = folder / "tmp-old"
    old.write_bytes(b"left by a killed process")
    os.utime(old, (0, 0))
    assert blobs.remove_stale_temp_files() == 1
    assert (folder / "tmp-fresh").exists() and not old.exists()


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from storage.files import atomic_write, atomic_write_bytes

    target = tmp_path / "sub" / "model.bin"
    atomic_write_bytes(target, b"version one")

    def failing_writer(stream):
        stream.write(b"half of version two")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing_writer)
    assert target.read_bytes() == b"version one"
    assert [p.name for p in target.parent.iterdir()] == ["model.bin"]


def test_a_bluesky_account_is_its_did_through_handle_changes(store):
    did, other_did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:plc:z72i7hdynmk6r22z27h6tvur"
    account = store.upsert_account("bluesky", "old.example.com", did, "Old")
    store.execute("UPDATE accounts SET cursor = 'c1' WHERE id = ?", (account,))
    post, _ = store.upsert_post(account, "bluesky", f"at://{did}/app.bsky.feed.post/1", None, "hi", None)
    # The handle changes: same row, same cursor and post; the old name is remembered for config lists.
    assert store.upsert_account("bluesky", "new.example.com", did, None) == account
    assert store.query_one("SELECT handle, cursor, display_name FROM accounts WHERE id = ?", (account,)) == {
        "handle": "new.example.com",
        "cursor": "c1",
        "display_name": "Old",
    }
    assert store.former_handles("bluesky") == {"old.example.com": did}
    # A DID given as the handle (followed before it was resolved) never replaces the real handle.
    assert store.upsert_account("bluesky", did, did) == account
    assert store.scalar("SELECT handle FROM accounts WHERE id = ?", (account,)) == "new.example.com"
    # A placeholder row followed by the new handle (no DID yet) merges into the account, posts and follow state.
    placeholder = store.upsert_account("bluesky", "newest.example.com")
    store.execute("UPDATE accounts SET followed = 1, followed_via = 'command' WHERE id = ?", (placeholder,))
    assert store.upsert_account("bluesky", "newest.example.com", did) == account
    assert store.query("SELECT id, handle, followed_via FROM accounts") == [
        {"id": account, "handle": "newest.example.com", "followed_via": "command"}
    ]
    # The old handle passes to another account: the first keeps its row and is renamed to its DID until resolved.
    second = store.upsert_account("bluesky", "someone.example.com", other_did)
    assert store.upsert_account("bluesky", "newest.example.com", other_did) == second
    assert store.scalar("SELECT handle FROM accounts WHERE id = ?", (account,)) == did
    assert store.scalar("SELECT account_id FROM posts WHERE id = ?", (post,)) == account
    # Other networks keep keying accounts by handle: Mastodon ids are only unique per instance.
    first = store.upsert_account("mastodon", "a@one.example", "7")
    assert store.upsert_account("mastodon", "b@two.example", "7") != first
