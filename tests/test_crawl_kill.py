"""A crawl SIGKILLed mid-run and run again stores every image exactly once (cursors advance only after storing).

The crawl runs in a subprocess serving the fake X API through `responses` inside it. In blocking mode the
child stops inside the N-th media download, having stored what came before; the test then SIGKILLs it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def child(data_dir: str, block_after: int, ready_file: str) -> int:
    import responses

    from bot.ingest.crawl import crawl_once
    from storage import Store
    from tests.sources_support import FakeClock, http_for
    from tests.test_sources_x import build_world, x_config

    clock = FakeClock()
    x, _images = build_world(clock)
    serve_media = x.media_file

    def media_file(request):
        if block_after and len(x.media_calls) + 1 >= block_after:
            Path(ready_file).write_text("blocked")
            time.sleep(600)  # the parent kills us here
        return serve_media(request)

    x.media_file = media_file
    config = x_config(Path(data_dir).parent, include_retweets=True)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        x.install(mock)
        with Store.open(data_dir) as store:
            summary = crawl_once(store, config, http=http_for(clock))
    print(summary.text())
    return 0


def run_child(data_dir: Path, block_after: int, ready_file: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(data_dir), str(block_after), str(ready_file)],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("block_after", [5])  # inside alice's 1004 GIF, after p1-p3 are stored
def test_killed_crawl_then_rerun_stores_each_image_once(tmp_path, block_after):
    from storage import Store
    from tests.sources_support import FakeClock
    from tests.test_sources_x import build_world

    data_dir = tmp_path / "data"
    ready = tmp_path / "ready"
    process = run_child(data_dir, block_after, ready)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "child never reached the blocking download"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    with Store.open(data_dir) as store:
        stored_before = store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'")
        cursors_before = [row["cursor"] for row in store.query("SELECT cursor FROM accounts")]
    assert stored_before < 6 and all(cursor is None for cursor in cursors_before)

    rerun = run_child(data_dir, 0, ready)
    output, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, output

    _x, images = build_world(FakeClock())
    expected = sorted(hashlib.sha256(images[n]).hexdigest() for n in ("p1", "p2", "p3", "gif.mp4", "video.mp4", "b3"))
    with Store.open(data_dir) as store:
        stored = sorted(row["sha256"] for row in store.query("SELECT sha256 FROM media WHERE status = 'ok'"))
        assert stored == expected
        assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'rejected'") == 1
        # Each post once, each image linked once per post; the retweet shares alice's media row.
        posts = [row["external_id"] for row in store.query("SELECT external_id FROM posts ORDER BY external_id")]
        assert posts == ["1002", "1003", "1004", "1005", "1006", "1007", "1008", "1010", "2003", "2005"]
        assert store.scalar("SELECT COUNT(*) FROM post_media") == 8
        files = [path for path in (data_dir / "media").rglob("*") if path.is_file()]
        assert len(files) == 6
        cursors = {row["handle"]: row["cursor"] for row in store.query("SELECT handle, cursor FROM accounts")}
        assert cursors == {"alice": "1010", "bob": "2007"}


if __name__ == "__main__":
    sys.exit(child(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
