"""`illustfeed run` in a subprocess: inbox -> classified -> /api/media; one process per data dir; SIGTERM -> exit 0."""

import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from bot.chat.commands import Actor, request_retrain
from storage import Store
from tests.conftest import cli_env
from tests.test_retrain import install_tiny_model

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A running `illustfeed` with its merged stdout/stderr collected by a thread (the pipe never fills)."""

    def __init__(self, args, cwd):
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *args],
            cwd=cwd,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.popen.poll() is not None:
                self.reader.join(5)
                break
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} in:\n{self.output()}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def drop(path, data: bytes) -> None:
    """Write as a person's file manager would finish a copy: a hidden temp name (skipped), then a rename."""
    temp = path.with_name(f".{path.name}.part")
    temp.write_bytes(data)
    os.replace(temp, path)


def wait_for_feed(port: int, expected: set[str], runner: Process, timeout: float = 60) -> None:
    """Poll /api/media until it lists exactly the media with sha256 in `expected`."""
    deadline = time.monotonic() + timeout
    shown: set[str] = set()
    while time.monotonic() < deadline and shown != expected:
        shown = {item["sha256"] for item in get_json(f"http://127.0.0.1:{port}/api/media")["items"]}
        time.sleep(0.5)
    assert shown == expected, runner.output()


@pytest.fixture
def bot_dir(tmp_path):
    from tests.synthetic import generate, jpeg_bytes

    port = free_port()
    (tmp_path / "config.toml").write_text(f"""
data_dir = "data"
[sources.folder]
path = "inbox"
[sources.x]
enabled = false
[scheduler]
folder_poll_seconds = 1
shutdown_grace_seconds = 5.0
[feed]
port = {port}
[classifier]
precision = "fp32"
overlays = false
progress = false
""")
    with Store.open(tmp_path / "data") as store:
        # softmax(4, 0, 0): every image is a confident illustration, so each one must reach the feed.
        install_tiny_model(store, (4.0, 0.0, 0.0))
    images = {f"drawing-{n}.jpg": jpeg_bytes(generate("illustration", n, (96, 96))) for n in range(4)}
    return {"dir": tmp_path, "port": port, "images": images}


def test_runner_classifies_the_inbox_into_the_feed_and_stops_cleanly(bot_dir):
    root, port = bot_dir["dir"], bot_dir["port"]
    runner = Process(["--config", "config.toml", "run"], cwd=root)
    try:
        runner.wait_for(f"feed: http://127.0.0.1:{port}", timeout=90)
        runner.wait_for("event=runner.started", timeout=10)
        assert get_json(f"http://127.0.0.1:{port}/healthz")["ok"] is True

        (root / "inbox/alice").mkdir(parents=True, exist_ok=True)
        first, *rest = bot_dir["images"].items()
        for name, data in rest:
            drop(root / "inbox/alice" / name, data)
        wait_for_feed(port, {hashlib.sha256(data).hexdigest() for _name, data in rest}, runner)
        assert sum(int(n) for n in re.findall(r"event=folder.done new=(\d+)", runner.output())) == 3

        # /retrain from chat with no labels at all: the retrain job fails, says why, and the runner goes on.
        with Store.open(root / "data") as store:
            request_retrain(store, Actor(by="test", via="cli", name="test", authorised=True))
        failure = runner.wait_for("event=retrain.failed", timeout=60)
        assert "DatasetError" in failure and "split is empty" in failure
        with sqlite3.connect(root / "data/illustfeed.db") as db:
            finished_at, result = db.execute("SELECT finished_at, result FROM retrain_requests").fetchone()
        assert finished_at and result.startswith("failed: DatasetError")
        drop(root / "inbox/alice" / first[0], first[1])
        wait_for_feed(port, {hashlib.sha256(data).hexdigest() for data in bot_dir["images"].values()}, runner)

        # A second runner on the same data dir refuses, naming the lock file and the PID holding it.
        second = subprocess.run(
            [sys.executable, "-m", "bot.cli", "--config", "config.toml", "run"],
            cwd=root,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert str((root / "data/illustfeed.lock").resolve()) in second.stderr
        assert f"PID {runner.popen.pid}" in second.stderr
        assert runner.popen.poll() is None  # the first one is unharmed

        started = time.monotonic()
        runner.popen.send_signal(signal.SIGTERM)
        assert runner.popen.wait(timeout=20) == 0, runner.output()
        assert time.monotonic() - started < 10
        runner.reader.join(5)
        assert "event=runner.stopped forced=False" in runner.output()
    finally:
        if runner.popen.poll() is None:
            runner.popen.kill()
            runner.popen.wait()

    with sqlite3.connect(root / "data/illustfeed.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM media WHERE status = 'ok'").fetchone()[0] == 4
        assert db.execute("SELECT COUNT(*) FROM predictions WHERE model_version = 'tiny-0'").fetchone()[0] == 4
    assert (root / "data/illustfeed.lock").read_text() == ""


def test_runner_refuses_a_taken_feed_port_with_a_clear_message(bot_dir):
    root, port = bot_dir["dir"], bot_dir["port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "bot.cli", "--config", "config.toml", "run"],
            cwd=root,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert result.returncode == 1
    assert "illustfeed: error: cannot start:" in result.stderr and str(port) in result.stderr
