"""The gallery rendered by a real headless Chromium against the real server: the thumbnails must show."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.config import Config, FeedConfig
from bot.feed import server_url, start_feed_server
from storage import Store
from tests.cdp import CHROMIUM, FLAGS
from tests.test_feed_fixtures import COLOURS, illustrations

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
            start_feed_server(self.config, host="127.0.0.1", port=0, extensions=self.extensions), self.loop
        ).result(timeout=30)
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
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=10000",
                f"--screenshot={screenshot}",
                "--window-size=1280,900",
                f"{url}/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        with Store.open(data_dir) as store:
            thumbnails_made = store.scalar("SELECT COUNT(*) FROM thumbnails")
    assert screenshot.is_file(), f"chromium made no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    # Six tiles of 220+ CSS px in a 1280 px window: each generated colour fills a large block of pixels.
    coverage = {colour: colour_coverage(screenshot, colour) for colour in COLOURS}
    assert all(pixels > 20_000 for pixels in coverage.values()), coverage
    assert thumbnails_made == len(COLOURS)


def test_the_gallery_keeps_aspect_ratios_fits_a_phone_and_follows_the_colour_scheme(tmp_path):
    import asyncio

    from tests.cdp import Browser
    from tests.test_feed_fixtures import add_post, make_image, predict

    data_dir = tmp_path / "data"
    sizes = [(320, 240), (200, 400), (480, 160), (300, 300), (240, 320), (400, 225)]
    with Store.open(data_dir) as store:
        for index, size in enumerate(sizes):
            media_id = add_post(store, index, account=f"artist{index % 2}", image=make_image(index, size))
            predict(store, media_id, "illustration")
    config = Config(data_dir=str(data_dir), feed=FeedConfig(title="Layout check"))
    measure = """(() => ({
        overflow: document.documentElement.scrollWidth - window.innerWidth,
        ratios: Array.from(document.querySelectorAll('.tile img')).map(
            i => [i.naturalWidth / i.naturalHeight, i.clientWidth / i.clientHeight, i.complete]),
        background: getComputedStyle(document.body).backgroundColor,
    }))()"""

    async def scroll_through(page) -> None:
        """Scroll to the end so lazy tiles load, then wait until every image is decoded."""
        for _ in range(10):
            await page.evaluate("window.scrollBy(0, window.innerHeight)")
            await asyncio.sleep(0.2)
        await page.evaluate(
            "Promise.all(Array.from(document.images).map(i => i.decode()))",
        )

    async def look(url: str) -> dict:
        seen = {}
        for name, width, height in (("phone", 390, 844), ("desktop", 1280, 900)):
            async with Browser(tmp_path / f"profile-{name}", width, height) as page:
                await page.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=name == "phone",
                )
                for scheme in ("light", "dark"):
                    await page.send(
                        "Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": scheme}]
                    )
                    await page.goto(f"{url}/")
                    await scroll_through(page)
                    seen[(name, scheme)] = await page.evaluate(measure)
                    await page.screenshot(tmp_path / f"gallery-{name}-{scheme}.png")
                await page.goto(f"{url}/?account=x:artist1")
                await scroll_through(page)
                seen[(name, "artist1")] = await page.evaluate(measure)
        return seen

    with ServerThread(config) as url:
        seen = asyncio.run(look(url))
    for (name, scheme), facts in seen.items():
        assert facts["overflow"] <= 0, (name, scheme, facts)  # nothing wider than the screen
        for natural, shown, complete in facts["ratios"]:
            assert complete and abs(natural - shown) / natural < 0.03, (name, natural, shown)  # no crop, no squash
    assert len(seen[("phone", "light")]["ratios"]) == 6 and len(seen[("desktop", "artist1")]["ratios"]) == 3
    light, dark = seen[("desktop", "light")]["background"], seen[("desktop", "dark")]["background"]
    assert light != dark and dark == "rgb(18, 18, 18)"
