"""The review page over real HTTP on a real store: access by token and cookie, CSRF, label/skip/undo, escaping."""

from __future__ import annotations

import asyncio
import re

from aiohttp.test_utils import TestClient, TestServer

from bot.chat.web import COOKIE, EXTENSIONS, csrf_value, session_value
from bot.config import FeedConfig
from bot.feed.server import create_app
from storage import Store
from tests.chat_store import ingest_images, predict

TOKEN = "s3cret-review-token"
SETTINGS = FeedConfig(review_token=TOKEN)


def run(data_dir, scenario, settings: FeedConfig = SETTINGS):
    async def main():
        app = create_app(settings, lambda: Store.open(data_dir), EXTENSIONS)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await scenario(client)

    return asyncio.run(main())


def queued(store: Store) -> list[int]:
    media = ingest_images(store, [1, 2, 3])
    predict(store, media[0], (0.45, 0.35, 0.2))  # priority 0.9
    predict(store, media[1], (0.3, 0.4, 0.3))  # priority 0.9, queued later
    predict(store, media[2], (0.2, 0.25, 0.55))  # priority 0.7
    return media


async def logged_in(client) -> None:
    response = await client.get(f"/review?token={TOKEN}", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/review"
    cookie = response.cookies[COOKIE]
    assert cookie.value == session_value(TOKEN) and cookie["httponly"] and cookie["samesite"] == "Strict"


def form_fields(page: str) -> dict:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))


def labels(store: Store) -> list[tuple]:
    return [
        tuple(row.values())
        for row in store.query('SELECT media_id, label, "by", via, revoked_at IS NOT NULL FROM labels ORDER BY id')
    ]


def test_the_page_is_off_without_a_token_and_refuses_strangers(store, tmp_path):
    queued(store)
    data_dir = tmp_path / "data"

    async def off(client):
        response = await client.get("/review")
        assert response.status == 404 and "review_token" in await response.text()

    run(data_dir, off, FeedConfig())

    async def strangers(client):
        assert (await client.get("/review")).status == 401
        assert (await client.get("/review?token=wrong")).status == 401
        assert (await client.post("/review", data={"answer": "photo", "media": "1"})).status == 403
        assert (await client.get("/review/image/1")).status == 401
        await logged_in(client)
        # Logged in, but a form without the page's CSRF field is refused and records nothing.
        response = await client.post("/review", data={"answer": "photo", "media": "1"})
        assert response.status == 403 and "CSRF" in await response.text()
        response = await client.post("/review", data={"answer": "photo", "media": "1", "csrf": "forged"})
        assert response.status == 403

    run(data_dir, strangers)
    assert labels(store) == []


def test_label_skip_and_undo_through_the_page(store, tmp_path):
    media = queued(store)
    data_dir = tmp_path / "data"

    async def scenario(client):
        await logged_in(client)
        page = await (await client.get("/review")).text()
        assert f"Media {media[0]} (3 waiting for review)" in page
        assert f'src="/review/image/{media[0]}"' in page and f'src="/review/overlay/{media[0]}"' in page
        for key, answer in (("i", "illustration"), ("s", "screenshot"), ("p", "photo"), ("k", "skip"), ("u", "undo")):
            assert f'value="{answer}" accesskey="{key}"' in page
        fields = form_fields(page)
        assert fields == {"csrf": csrf_value(TOKEN), "media": str(media[0])}
        image = await client.get(f"/review/image/{media[0]}")
        assert image.status == 200 and (await image.read()).startswith(b"\x89PNG")
        assert (await client.get(f"/review/overlay/{media[0]}")).status == 200

        response = await client.post("/review", data={**fields, "answer": "illustration"}, allow_redirects=False)
        assert response.status == 303  # post/redirect/get: a reload never answers twice
        page = await (await client.get(response.headers["Location"])).text()
        assert f"Media {media[0]} labelled illustration." in page and f"Media {media[1]} (2 waiting" in page

        page = await (await client.post("/review", data={**form_fields(page), "answer": "skip"})).text()
        assert f"Media {media[1]} skipped." in page and f"Media {media[2]} (2 waiting" in page

        page = await (await client.post("/review", data={**form_fields(page), "answer": "undo"})).text()
        assert f"Undid your illustration on media {media[0]}" in page
        assert f"Media {media[0]} (3 waiting" in page  # back in the queue, ahead of the skipped one

        page = await (
            await client.post("/review", data={"csrf": csrf_value(TOKEN), "media": "abc", "answer": "photo"})
        ).text()
        assert "media must be a media id" in page

    run(data_dir, scenario)
    assert labels(store) == [(media[0], "illustration", "web", "web", 1)]
    assert store.scalar("SELECT state FROM review_queue WHERE media_id = ?", (media[1],)) == "skipped"


def test_author_names_and_reasons_are_escaped(store, tmp_path):
    [media_id] = ingest_images(store, [7], account="<script>alert(1)</script>")
    predict(store, media_id, (0.4, 0.35, 0.25))
    data_dir = tmp_path / "data"

    async def scenario(client):
        await logged_in(client)
        page = await (await client.get("/review?said=<b>hi</b>")).text()
        assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
        assert "<b>hi</b>" not in page and "&lt;b&gt;hi&lt;/b&gt;" in page

    run(data_dir, scenario)


def test_an_empty_queue_offers_only_undo(store, tmp_path):
    async def scenario(client):
        await logged_in(client)
        page = await (await client.get("/review")).text()
        assert "The review queue is empty." in page
        assert 'value="undo"' in page and 'value="illustration"' not in page

    run(tmp_path / "data", scenario)


def test_a_media_page_relabel_link_opens_that_media(store, tmp_path):
    media = queued(store)
    data_dir = tmp_path / "data"

    async def scenario(client):
        await logged_in(client)
        page = await (await client.get(f"/review?media={media[2]}")).text()
        assert f"Media {media[2]} (3 waiting for review)" in page
        page = await (await client.post("/review", data={**form_fields(page), "answer": "screenshot"})).text()
        assert f"Media {media[2]} labelled screenshot." in page
        missing = await (await client.get("/review?media=999")).text()
        assert "no media with id 999" in missing

    run(data_dir, scenario)
    assert labels(store) == [(media[2], "screenshot", "web", "web", 0)]
