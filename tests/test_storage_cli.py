"""Commands on a failing data dir: a full tmpfs, a full disk at COMMIT and mid-migration, a database another
process holds, a read-only mount. One line each, an exit code per kind, nothing stored lost, the same command
run again completes with one blob per row."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.cli import main
from bot.config import load_config
from bot.feed.server import server_url, start_feed_server
from storage import SCHEMA_VERSION, Store, sha256_hex
from storage.errors import EXIT_DISK_FULL, EXIT_LOCKED, EXIT_READ_ONLY
from tests import imagegen
from tests.conftest import cli_env
from tests.storage_faults import (
    fail_nth,
    fail_times,
    grow_tmpfs,
    inject_sqlite_fault,
    integrity,
    read_only_view,
    small_tmpfs,
)
from tests.test_storage_faults import database_at_version


def write_config(tmp_path: Path, data_dir: Path, busy_timeout_s: float = 2.0) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'data_dir = "{data_dir}"\n[ingest]\nprogress = false\n'
        f"[storage]\nbusy_timeout_seconds = {busy_timeout_s}\n[classifier]\nprogress = false\n"
    )
    return path


def make_inbox(tmp_path: Path, count: int, size=(160, 120)) -> Path:
    inbox = tmp_path / "inbox"
    (inbox / "artist").mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        (inbox / "artist" / f"{seed:04d}.png").write_bytes(imagegen.png(7000 + seed, size=size))
    return inbox


def run(capsys, config: Path, *arguments: str) -> tuple[int, str, str]:
    code = main([*arguments, "--config", str(config)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_blob_per_row(data_dir: Path, expected: int) -> None:
    assert integrity(data_dir / "illustfeed.db") == "ok"
    with Store.open(data_dir, read_only=True) as store:
        rows = store.query("SELECT sha256, ext, bytes FROM media WHERE status = 'ok'")
        assert len(rows) == expected
        for row in rows:
            assert sha256_hex(store.blobs.read(row["sha256"], row["ext"])) == row["sha256"]
    blob_files = [path for path in (data_dir / "media").glob("*/*/*") if path.is_file()]
    assert len(blob_files) == expected


@pytest.mark.slow
def test_import_on_a_full_tmpfs_says_how_far_it_got_and_the_same_command_completes(tmp_path, capsys):
    inbox = make_inbox(tmp_path, 200)
    with small_tmpfs(tmp_path / "disk", 1024 * 1024) as disk:
        config = write_config(tmp_path, disk / "data")
        code, _out, err = run(capsys, config, "import", str(inbox))
        assert code == EXIT_DISK_FULL, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err
        assert lines[0].startswith(f"illustfeed: disk full writing {disk / 'data'}")
        stored = int(lines[0].split(": ")[2].split(" of ")[0])
        assert 0 < stored < 200
        assert lines[0].endswith(
            f"{stored} of 200 images stored; free space and run the same command again (nothing is lost)"
        )
        with Store.open(disk / "data", read_only=True) as store:  # every stored media has its whole file
            assert store.scalar("SELECT COUNT(*) FROM media") == stored
        assert integrity(disk / "data/illustfeed.db") == "ok"
        grow_tmpfs(disk, 32 * 1024 * 1024)
        code, out, err = run(capsys, config, "import", str(inbox))
        assert code == 0, err
        assert_one_blob_per_row(disk / "data", 200)


def test_import_cut_by_a_full_disk_at_commit_counts_what_is_stored_and_resumes(tmp_path, capsys, monkeypatch):
    inbox = make_inbox(tmp_path, 12)
    config = write_config(tmp_path, tmp_path / "data")
    assert run(capsys, config, "init")[0] == 0
    # The 5th post's COMMIT fails: its blob is on disk, its rows are not.
    inject_sqlite_fault(monkeypatch, fail_nth(5, lambda sql: sql == "COMMIT"))
    code, _out, err = run(capsys, config, "import", str(inbox))
    assert code == EXIT_DISK_FULL
    assert err == (
        f"illustfeed: disk full writing {tmp_path / 'data/illustfeed.db'}: 4 of 12 images stored; "
        "free space and run the same command again (nothing is lost)\n"
    )
    monkeypatch.undo()
    with Store.open(tmp_path / "data") as store:
        assert store.scalar("SELECT COUNT(*) FROM media") == 4
    code, out, err = run(capsys, config, "import", str(inbox))
    assert code == 0, err
    assert "known posts 4" in out and "media new 8" in out
    assert_one_blob_per_row(tmp_path / "data", 12)


def test_a_migration_cut_by_a_full_disk_is_named_and_the_next_start_resumes_it(tmp_path, capsys, monkeypatch):
    database_at_version(tmp_path / "data", 2)
    config = write_config(tmp_path, tmp_path / "data")
    inject_sqlite_fault(monkeypatch, fail_times(1, lambda sql: sql.startswith("CREATE INDEX media_verdict_final")))
    code, _out, err = run(capsys, config, "status")
    assert code == EXIT_DISK_FULL
    assert err.startswith(
        f"illustfeed: disk full while migrating the database schema from version 2 to 3 of "
        f"{SCHEMA_VERSION} (it resumes on the next start) writing {tmp_path / 'data/illustfeed.db'}"
    )
    assert "cannot rollback" not in err and err.count("\n") == 1
    code, out, err = run(capsys, config, "status")
    assert code == 0, err
    assert out.startswith("media: 20 stored")
    assert integrity(tmp_path / "data/illustfeed.db") == "ok"


HOLDER = """
import sqlite3, sys
from bot.run.lock import DataDirLock
lock = DataDirLock(sys.argv[1]).acquire()
conn = sqlite3.connect(sys.argv[1] + "/illustfeed.db", isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("holding", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def test_a_locked_database_names_the_process_holding_it_and_the_retry_completes(tmp_path, capsys):
    inbox = make_inbox(tmp_path, 3)
    config = write_config(tmp_path, tmp_path / "data", busy_timeout_s=0.5)
    assert run(capsys, config, "init")[0] == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "data")],
        env=cli_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        code, _out, err = run(capsys, config, "import", str(inbox))
        assert code == EXIT_LOCKED
        assert err == (
            f"illustfeed: database locked by another process (PID {holder.pid} holds the data dir's "
            f"illustfeed.lock) for 0.5 s: {tmp_path / 'data/illustfeed.db'}: 0 of 3 images stored; "
            "wait for it to finish (or stop it) and run the same command again (nothing is lost); "
            "[storage] busy_timeout_seconds sets how long to wait\n"
        )
        code, out, _err = run(capsys, config, "status")  # readers are not blocked by a writer (WAL)
        assert code == 0 and out.startswith("media: 0 stored")
    finally:
        holder.communicate("go\n", timeout=30)
    code, _out, err = run(capsys, config, "import", str(inbox))
    assert code == 0, err
    assert_one_blob_per_row(tmp_path / "data", 3)


def test_debug_shows_the_traceback_that_is_otherwise_left_out(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path, tmp_path / "data")
    assert run(capsys, config, "init")[0] == 0
    inject_sqlite_fault(monkeypatch, lambda sql: sql == "COMMIT")
    inbox = make_inbox(tmp_path, 1)
    code, _out, err = run(capsys, config, "import", str(inbox))
    assert code == EXIT_DISK_FULL and "Traceback" not in err
    code, _out, err = run(capsys, config, "--debug", "import", str(inbox))
    assert code == EXIT_DISK_FULL and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("illustfeed: disk full writing")


@pytest.mark.slow
def test_a_read_only_data_dir_still_serves_reads_and_writers_get_the_sentence(tmp_path, capsys):
    inbox = make_inbox(tmp_path, 4)
    config = write_config(tmp_path, tmp_path / "data")
    assert run(capsys, config, "import", str(inbox))[0] == 0
    with read_only_view(tmp_path / "data", tmp_path / "ro") as view:
        ro_config = write_config(tmp_path / "inbox", view)
        code, out, err = run(capsys, ro_config, "status")
        assert code == 0, err
        assert out.startswith("media: 4 stored") and "data dir: read-only" in out
        code, out, err = run(capsys, ro_config, "check")
        assert code == 0, err
        assert "checked 4 media" in out and "no problems" in out
        code, _out, err = run(capsys, ro_config, "import", str(inbox))
        assert code == EXIT_READ_ONLY
        assert err.startswith(f"illustfeed: the data dir is read-only: cannot write {view / 'illustfeed.db'}")
        assert err.count("\n") == 1

        async def serve() -> tuple[dict, int, bytes, str]:
            runner = await start_feed_server(load_config(ro_config), host="127.0.0.1", port=0)
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(server_url(runner) + "/healthz") as response:
                        health = await response.json()
                    with Store.open(view, read_only=True) as store:
                        row = store.query_one("SELECT sha256, ext FROM media ORDER BY id LIMIT 1")
                        original = store.blobs.read(row["sha256"], row["ext"])
                    async with session.get(f"{server_url(runner)}/thumb/{row['sha256']}") as response:
                        return health, response.status, await response.read(), original
            finally:
                await runner.cleanup()

        health, status, body, original = asyncio.run(serve())
        assert health["ok"] and health["storage"] == "read-only" and health["media"] == 4
        assert status == 200 and body == original  # no thumbnail can be stored: the original stands in
    assert_one_blob_per_row(tmp_path / "data", 4)


def test_a_runner_job_meeting_a_locked_database_logs_one_line_and_the_next_run_stores(tmp_path, caplog):
    import logging

    from bot.config import parse_config
    from bot.ingest.crawl import crawl_folder
    from bot.run.scheduler import JobContext, run_job

    make_inbox(tmp_path, 3)
    context = JobContext(
        parse_config(
            {
                "data_dir": str(tmp_path / "data"),
                "storage": {"busy_timeout_seconds": 0.3},
                "ingest": {"progress": False},
                "sources": {"folder": {"path": str(tmp_path / "inbox")}},
            },
            environ={},
        )
    )

    def folder_import(store, context):
        return {"new": crawl_folder(store, context.config).ingest.media_new}

    Store.open(tmp_path / "data").close()
    holder = sqlite3.connect(tmp_path / "data/illustfeed.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.INFO, logger="illustfeed.runner"):
        assert run_job("folder", folder_import, context) is None
    holder.execute("ROLLBACK")
    holder.close()
    failed = [record for record in caplog.records if record.getMessage().startswith("event=folder.failed")]
    assert len(failed) == 1 and failed[0].exc_info is None
    assert (
        failed[0]
        .getMessage()
        .startswith(
            f'event=folder.failed storage=locked error="database locked by another process for 0.3 s: '
            f"{tmp_path / 'data/illustfeed.db'}: 0 of 3 images stored; wait for it"
        )
    )
    assert run_job("folder", folder_import, context) == {"new": 3}  # the next tick
    assert_one_blob_per_row(tmp_path / "data", 3)


def test_a_review_answer_on_a_read_only_store_is_a_503_with_the_sentence(store, tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    from bot.chat.web import EXTENSIONS
    from bot.config import FeedConfig
    from bot.feed.server import create_app
    from tests.test_review_web import TOKEN, form_fields, logged_in, queued

    media = queued(store)

    async def scenario():
        app = create_app(
            FeedConfig(review_token=TOKEN), lambda: Store.open(tmp_path / "data", read_only=True), EXTENSIONS
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await logged_in(client)
            page = await (await client.get("/review")).text()  # reading works
            response = await client.post(
                "/review", data={**form_fields(page), "answer": "photo"}, allow_redirects=False
            )
            return page, response.status, response.headers.get("Cache-Control"), await response.text()

    page, status, cache, text = asyncio.run(scenario())
    assert f"Media {media[0]} (3 waiting for review)" in page
    assert (status, cache) == (503, "no-store")
    assert text.startswith("the data dir is read-only: cannot write") and "\n" not in text
    assert store.scalar("SELECT COUNT(*) FROM labels") == 0
