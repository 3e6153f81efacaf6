"""A SIGKILLed import leaves a consistent database and no half-written blob; re-running completes it."""
import signal
import subprocess
import sys
import time

import pytest

from storage import Store
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
    deadline = time.monotonic() + 60
    db = tmp_path / "data/illustfeed.db"
    while time.monotonic() < deadline:
        if db.exists():
            with Store.open(tmp_path / "data") as store:
                if store.scalar("SELECT COUNT(*) FROM media") >= 10:
                    break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    with Store.open(tmp_path / "data") as store:
        assert store.scalar("PRAGMA integrity_check") == "ok"
        stored = store.scalar("SELECT COUNT(*) FROM media")
        assert 10 <= stored < IMAGES
        # Every row's blob is complete: its bytes hash to its name.
        for row in store.query("SELECT sha256, ext FROM media"):
            from storage import sha256_hex
            assert sha256_hex(store.blobs.read(row["sha256"], row["ext"])) == row["sha256"]
    assert not list((tmp_path / "data/media").glob("*/*/.tmp-*"))

    rerun = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with Store.open(tmp_path / "data") as store:
        assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'") == IMAGES
        assert store.scalar("SELECT COUNT(*) FROM posts") == IMAGES
        assert store.scalar("SELECT COUNT(*) FROM post_media") == IMAGES
        assert store.scalar("SELECT COUNT(DISTINCT sha256) FROM media") == IMAGES
