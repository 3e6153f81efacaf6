"""The gallery rendered by a real headless Chromium against the real server: the thumbnails must show."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.config import Config, FeedConfig
from bot.feed import server_url, start_feed_server
from storage import Store
from tests.test_feed_fixtures import COLOURS, illustrations

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)"),
]


class ServerThread:
    """The feed server started with start_feed_server inside an event loop of its own thread."""

    def __init__(self, config: Config, extensions=()):
        self.config = config
        self.extensions = extensions
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = None

    def __enter__(self) -> str:
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(
            start_feed_server(self.config, host="127.0.0.1", port=0, extensions=self.extensions),
            self.loop).result(timeout=30)
        return server_url(self.runner)

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def colour_coverage(screenshot: Path, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    """How many pixels of the screenshot are within `tolerance` of `colour` on every channel."""
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.array(colour, dtype=np.int16)).max(axis=2) <= tolerance).sum())


def test_headless_chromium_renders_the_gallery_with_thumbnails(tmp_path):
    data_dir = tmp_path / "data"
    with Store.open(data_dir) as store:
        illustrations(store, len(COLOURS))
    config = Config(data_dir=str(data_dir), feed=FeedConfig(title="Browser check"))
    screenshot = tmp_path / "gallery.png"
    with ServerThread(config) as url:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
             f"--screenshot={screenshot}", "--window-size=1280,900", f"{url}/"],
            capture_output=True, text=True, timeout=120,
        )
        with Store.open(data_dir) as store:
            thumbnails_made = store.scalar("SELECT COUNT(*) FROM thumbnails")
    assert screenshot.is_file(), f"chromium made no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    # Six tiles of 220+ CSS px in a 1280 px window: each generated colour fills a large block of pixels.
    coverage = {colour: colour_coverage(screenshot, colour) for colour in COLOURS}
    assert all(pixels > 20_000 for pixels in coverage.values()), coverage
    assert thumbnails_made == len(COLOURS)
