"""The runner's parts in-process: data-dir lock, job isolation (a raising job), stop at a transaction boundary."""

import asyncio
import logging
import os
import subprocess
import sys
import threading

import pytest

from bot.config import load_config, parse_config
from bot.run.lock import DataDirLock, DataDirLocked
from tests.conftest import cli_env
from bot.run.scheduler import JobCancelled, JobContext, StoppableStore, build_scheduler, format_event, run_job


def test_lock_refuses_a_second_holder_and_names_file_and_pid(tmp_path):
    with DataDirLock(tmp_path):
        assert (tmp_path / "illustfeed.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(DataDirLocked) as refused:
            DataDirLock(tmp_path).acquire()
        assert str((tmp_path / "illustfeed.lock").resolve()) in str(refused.value)
        assert f"PID {os.getpid()}" in str(refused.value)
        # Another process is refused too (flock is per open file, so this is the real case).
        code = (
            "import sys; from bot.run.lock import DataDirLock, DataDirLocked\n"
            f"try: DataDirLock({str(tmp_path)!r}).acquire()\n"
            "except DataDirLocked as e: print(e); sys.exit(3)\n"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
        assert other.returncode == 3 and f"PID {os.getpid()}" in other.stdout
    # Released: the next holder gets it, and the file no longer names a PID meanwhile.
    assert (tmp_path / "illustfeed.lock").read_text() == ""
    with DataDirLock(tmp_path):
        pass


def test_lock_dies_with_its_process(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from bot.run.lock import DataDirLock; import time\n"
            f"DataDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirLocked, match=f"PID {holder.pid}"):
            DataDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with DataDirLock(tmp_path):  # a killed holder leaves no stale lock
        pass


def test_event_lines_are_one_line_and_quoted():
    line = format_event("crawl.failed", new=3, duration_s=1.23456, error='bad "thing"\nhappened')
    assert line == 'event=crawl.failed new=3 duration_s=1.23 error="bad \\"thing\\"\\nhappened"'
    assert "\n" not in line


def _context(tmp_path, **sections) -> JobContext:
    table = {"data_dir": str(tmp_path / "data"), "sources": {"folder": {"path": str(tmp_path / "inbox")}}}
    table.update(sections)
    return JobContext(parse_config(table, environ={}))


def test_a_raising_job_is_logged_and_runs_again(tmp_path, caplog):
    context = _context(tmp_path, scheduler={"folder_poll_seconds": 1})
    calls = []

    def flaky(store, context):
        calls.append(store.scalar("SELECT COUNT(*) FROM media"))
        if len(calls) == 1:
            raise RuntimeError("source exploded")
        return {"new": 0}

    async def main():
        scheduler = build_scheduler(context, {"folder": flaky})
        scheduler.start()
        deadline = asyncio.get_running_loop().time() + 15
        while len(calls) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        scheduler.shutdown(wait=False)
        await asyncio.to_thread(context.wait_idle, 5)

    with caplog.at_level(logging.INFO, logger="illustfeed.runner"):
        asyncio.run(main())
    assert calls == [0, 0]
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith('event=folder.failed error="RuntimeError: source exploded"') for m in messages)
    assert any(m.startswith("event=folder.done new=0 duration_s=") for m in messages)


def test_stop_lets_the_open_transaction_commit_and_refuses_the_next(tmp_path):
    stop = threading.Event()
    with StoppableStore.open_stoppable(tmp_path / "data", stop) as store:
        with store.transaction():
            store.upsert_account("folder", "alice")
            stop.set()  # SIGTERM arrives mid-transaction
            store.upsert_account("folder", "bob")
        with pytest.raises(JobCancelled):
            with store.transaction():
                store.upsert_account("folder", "carol")
        assert [r["handle"] for r in store.query("SELECT handle FROM accounts ORDER BY id")] == ["alice", "bob"]


def test_a_cancelled_job_is_logged_as_cancelled_not_failed(tmp_path, caplog):
    context = _context(tmp_path)

    def body(store, context):
        context.stop.set()
        with store.transaction():
            store.upsert_account("folder", "never")

    with caplog.at_level(logging.INFO, logger="illustfeed.runner"):
        assert run_job("folder", body, context) is None
    assert any(r.getMessage().startswith("event=folder.cancelled") for r in caplog.records)
    assert not context.running


def test_scheduler_sections_validate_and_default():
    config = load_config(None, environ={})
    assert config.scheduler.crawl_interval_seconds == 900 and config.scheduler.folder_poll_seconds == 60
    assert config.retrain.schedule == "0 3 * * *" and config.retrain.min_new_labels == 20
    from bot.config import ConfigError

    with pytest.raises(ConfigError, match="retrain.schedule"):
        parse_config({"retrain": {"schedule": "0 25 * * *"}}, environ={})
    with pytest.raises(ConfigError, match="scheduler.folder_poll_seconds"):
        parse_config({"scheduler": {"folder_poll_seconds": 0}}, environ={})


def test_retrain_report_reaches_the_bot_from_a_job_thread(tmp_path):
    """The report callback runs on a job thread; the bot's coroutine runs on the loop, PNG bytes included."""
    from bot.run.runner import Runner

    class Bot:
        reports = []

        async def post_report(self, text, png=None):
            self.reports.append((text, png, threading.current_thread() is threading.main_thread()))

    png = tmp_path / "retrain-v2-confusion.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    runner = Runner(parse_config({"data_dir": str(tmp_path / "data")}, environ={}), announce=lambda text: None)
    runner.bot = Bot()

    async def main():
        runner.loop = asyncio.get_running_loop()
        await asyncio.to_thread(runner.report_to_discord, "Retrain: model v2 promoted", png)

    asyncio.run(main())
    assert Bot.reports == [("Retrain: model v2 promoted", png.read_bytes(), True)]
