"""A SIGKILLed import leaves a consistent database and no half-written blob; re-running completes it."""

import signal
import subprocess
import sys
import time

import pytest

from storage import Store, sha256_hex
from tests import imagegen
from tests.conftest import cli_env

IMAGES = 150


@pytest.mark.slow
def test_import_killed_midway_then_rerun_stores_each_image_once(tmp_path):
    inbox = tmp_path / "inbox/acc"
    inbox.mkdir(parents=True)
    for seed in range(IMAGES):
        (inbox / f"{seed:04d}.png").write_bytes(imagegen.png(5000 + seed, size=(480, 360)))
    command = [sys.executable, "-m", "bot.cli", "import", "inbox"]
    process = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill once some, but not all, media rows are committed.
    deadline = time.monotonic() + 240
    db = tmp_path / "data/illustfeed.db"
    seen = 0
    while time.monotonic() < deadline and seen < 10 and process.poll() is None:
        if db.exists():
            with Store.open(tmp_path / "data") as store:
                seen = store.scalar("SELECT COUNT(*) FROM media")
        time.sleep(0.05)
    assert process.poll() is None, "the import finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    with Store.open(tmp_path / "data") as store:
        assert store.scalar("PRAGMA integrity_check") == "ok"
        stored = store.scalar("SELECT COUNT(*) FROM media")
        assert seen <= stored < IMAGES
        for row in store.query("SELECT sha256, ext FROM media"):
            assert store.blobs.exists(row["sha256"], row["ext"])
    # Every named blob is complete: its bytes hash to its name (a killed write can only leave a .tmp- file).
    for blob in (tmp_path / "data/media").glob("*/*/[0-9a-f]*"):
        assert sha256_hex(blob.read_bytes()) == blob.stem

    rerun = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with Store.open(tmp_path / "data") as store:
        assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'") == IMAGES
        assert store.scalar("SELECT COUNT(*) FROM posts") == IMAGES
        assert store.scalar("SELECT COUNT(*) FROM post_media") == IMAGES
        assert store.scalar("SELECT COUNT(DISTINCT sha256) FROM media") == IMAGES
