"""The review page in a real headless Chromium against the real server: label, skip, undo, and refusal."""

from __future__ import annotations

import asyncio

import pytest

from bot.chat.web import EXTENSIONS
from bot.config import Config, FeedConfig
from storage import Store
from tests.cdp import CHROMIUM, Browser
from tests.chat_store import ingest_images, predict
from tests.test_feed_browser import ServerThread

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)"),
]
TOKEN = "browser-review-token"


def test_a_reviewer_labels_skips_and_undoes_in_the_browser(tmp_path):
    data_dir = tmp_path / "data"
    with Store.open(data_dir) as store:
        media = ingest_images(store, [1, 2, 3])
        predict(store, media[0], (0.45, 0.35, 0.2))
        predict(store, media[1], (0.3, 0.4, 0.3))
        predict(store, media[2], (0.2, 0.25, 0.55))
    config = Config(data_dir=str(data_dir), feed=FeedConfig(review_token=TOKEN))

    async def session(url: str) -> dict:
        seen = {}
        async with Browser(tmp_path / "profile") as page:
            await page.goto(f"{url}/review")
            seen["refused"] = await page.text()
            await page.goto(f"{url}/review?token={TOKEN}")
            seen["first"] = await page.text()
            seen["images_loaded"] = await page.evaluate(
                "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
            )
            await page.screenshot(tmp_path / "review.png")
            await page.click('button[value="illustration"]')
            seen["after_label"] = await page.text()
            await page.click('button[value="skip"]')
            seen["after_skip"] = await page.text()
            await page.click('button[value="undo"]')
            seen["after_undo"] = await page.text()
        return seen

    with ServerThread(config, EXTENSIONS) as url:
        seen = asyncio.run(session(url))
    assert "open /review?token=TOKEN once" in seen["refused"]
    assert f"Media {media[0]} (3 waiting for review)" in seen["first"]
    assert seen["images_loaded"] == [True, True]  # the image and its Grad-CAM overlay
    assert f"Media {media[0]} labelled illustration." in seen["after_label"]
    assert f"Media {media[1]} skipped." in seen["after_skip"]
    assert f"Undid your illustration on media {media[0]}" in seen["after_undo"]
    with Store.open(data_dir) as store:
        rows = store.query("SELECT media_id, label, via, revoked_at IS NOT NULL AS revoked FROM labels")
        assert rows == [{"media_id": media[0], "label": "illustration", "via": "web", "revoked": 1}]
        assert store.scalar("SELECT state FROM review_queue WHERE media_id = ?", (media[1],)) == "skipped"
