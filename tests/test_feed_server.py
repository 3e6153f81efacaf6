"""The feed app over HTTP (aiohttp test client) on a real store: pages, rules, paging, escaping, media, errors."""

from __future__ import annotations

import asyncio
import io
import re

import feedparser
import pytest
from PIL import Image

from bot import review
from bot.config import FeedConfig, IngestConfig
from bot.ingest.ingest import ingest_post
from bot.sources.records import MediaRef, Post
from tests import imagegen
from tests.test_feed_fixtures import COLOURS, add_post, illustrations, make_image, predict, with_client

TILE_ID = re.compile(r'<figure class="tile" id="m(\d+)"')


@pytest.fixture
def data_dir(tmp_path):
    """Where conftest's `store` fixture keeps its database: the app opens its own Store on it."""
    return tmp_path / "data"


def tile_ids(page_html: str) -> list[int]:
    return [int(found) for found in TILE_ID.findall(page_html)]


def api_ids(body: dict) -> list[int]:
    return [item["id"] for item in body["items"]]


async def get_text(client, path: str, status: int = 200, **kwargs) -> str:
    response = await client.get(path, **kwargs)
    body = await response.text()
    assert response.status == status, body
    return body


async def get_json(client, path: str, status: int = 200) -> dict:
    response = await client.get(path)
    assert response.status == status, await response.text()
    return await response.json()


def test_gallery_shows_only_illustrations_newest_first_with_credit(store, data_dir):
    older, newer = illustrations(store, 2)
    screenshot = add_post(store, 10)
    predict(store, screenshot, "screenshot")
    unsure = add_post(store, 11)
    predict(store, unsure, "illustration", borderline=True)
    removed = add_post(store, 12)
    predict(store, removed, "illustration")
    store.execute("UPDATE media SET status = 'removed' WHERE id = ?", (removed,))
    credited = add_post(
        store,
        13,
        account="painter",
        display_name="Pat Painter",
        alt="a red fox in snow",
        url="https://x.example.org/painter/status/13",
        created_at="2026-03-04T05:06:07Z",
    )
    predict(store, credited, "illustration")

    async def scenario(client):
        response = await client.get("/")
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        return await response.text()

    page = with_client(data_dir, scenario)
    assert tile_ids(page) == [credited, newer, older]
    sha = store.media(credited)["sha256"]
    tile = page[page.index(f'id="m{credited}"') : page.index(f'id="m{newer}"')]
    assert f'src="/thumb/{sha}"' in tile and f'href="/m/{credited}"' in tile  # the tile opens its own page
    assert 'href="/?account=x%3Apainter"' in tile  # the author's name opens their own view
    assert 'alt="a red fox in snow"' in tile
    assert 'href="https://x.example.org/painter/status/13"' in tile
    assert "Pat Painter" in tile and "@painter" in tile
    assert '<time datetime="2026-03-04T05:06:07Z">2026-03-04 05:06</time>' in tile


def test_feed_rules_let_the_latest_human_label_win(store, data_dir):
    (model_only,) = illustrations(store, 1)
    overruled = add_post(store, 1)
    predict(store, overruled, "illustration")
    review.record_label(store, overruled, "photo", by="owner", via="cli")
    rescued = add_post(store, 2)
    predict(store, rescued, "screenshot")
    review.record_label(store, rescued, "illustration", by="owner", via="cli")
    unsure = add_post(store, 3)
    predict(store, unsure, "illustration", borderline=True)
    revoked = add_post(store, 4)
    predict(store, revoked, "screenshot")
    label_id, _previous = review.record_label(store, revoked, "illustration", by="owner", via="cli")
    store.execute("UPDATE labels SET revoked_at = datetime('now') WHERE id = ?", (label_id,))
    retrained = add_post(store, 5)
    predict(store, retrained, "illustration", version="v1")
    predict(store, retrained, "photo", version="v2")

    def feed_for(rule: str) -> list[int]:
        return with_client(data_dir, lambda client: get_json(client, "/api/media"), FeedConfig(rule=rule))["items"]

    confident = feed_for("human_then_confident")
    assert [item["id"] for item in confident] == [rescued, model_only]
    assert [item["decided_by"] for item in confident] == ["human", "model"]
    assert [item["id"] for item in feed_for("human_only")] == [rescued]
    assert [item["id"] for item in feed_for("any_prediction")] == [unsure, rescued, model_only]


def test_label_filter_selects_other_final_labels(store, data_dir):
    illustrations(store, 2)
    photo = add_post(store, 10)
    review.record_label(store, photo, "photo", by="owner", via="cli")
    screenshots = [add_post(store, 11), add_post(store, 12)]
    for media_id in screenshots:
        predict(store, media_id, "screenshot")

    async def scenario(client):
        return (
            await get_json(client, "/api/media?label=screenshot"),
            await get_text(client, "/?label=photo"),
            await get_text(client, "/feed.atom?label=photo"),
        )

    screenshot_page, photo_page, photo_atom = with_client(data_dir, scenario)
    assert api_ids(screenshot_page) == screenshots[::-1]
    assert {item["label"] for item in screenshot_page["items"]} == {"screenshot"}
    assert tile_ids(photo_page) == [photo]
    assert [entry.id for entry in feedparser.parse(photo_atom).entries] == [
        f"urn:illustfeed:media:{store.media(photo)['sha256']}"
    ]


def test_paging_has_no_gaps_or_repeats_while_new_media_arrive(store, data_dir):
    existing = illustrations(store, 7)

    async def scenario(client):
        seen = []
        first = await get_json(client, "/api/media?limit=3")
        seen.append(api_ids(first))
        # New media arrive between page requests: two illustrations and a screenshot.
        arrived = illustrations(store, 2, start=100)
        screenshot = add_post(store, 200)
        predict(store, screenshot, "screenshot")
        cursor = first["next_cursor"]
        while cursor:
            page = await get_json(client, f"/api/media?limit=3&cursor={cursor}")
            seen.append(api_ids(page))
            cursor = page["next_cursor"]
        fresh = await get_json(client, "/api/media?limit=3")
        # The gallery's own "Older" link carries the same cursor.
        gallery = await get_text(client, "/?limit=3")
        older_link = re.search(r'<a rel="next" href="([^"]+)"', gallery).group(1).replace("&amp;", "&")
        second_gallery_page = await get_text(client, older_link)
        return seen, arrived, api_ids(fresh), tile_ids(gallery), tile_ids(second_gallery_page)

    seen, arrived, fresh, gallery_ids, second_gallery_ids = with_client(data_dir, scenario)
    assert [len(page) for page in seen] == [3, 3, 1]
    assert [media_id for page in seen for media_id in page] == existing[::-1]
    assert fresh == [arrived[1], arrived[0], existing[-1]]
    assert gallery_ids + second_gallery_ids == fresh + existing[::-1][1:4]


def test_bad_query_values_are_400_naming_the_value(store, data_dir):
    illustrations(store, 1)

    async def scenario(client):
        return [
            (await get_json(client, "/api/media?label=cats", status=400))["error"],
            (await get_json(client, "/api/media?cursor=-5", status=400))["error"],
            (await get_json(client, "/api/media?limit=0", status=400))["error"],
            (await get_json(client, "/api/media?limit=201", status=400))["error"],
            await get_text(client, "/?cursor=abc", status=400),
            (await client.get("/feed.atom?label=%3Cx%3E")).headers["Content-Type"],
        ]

    errors = with_client(data_dir, scenario)
    assert "'cats'" in errors[0] and "illustration" in errors[0]
    assert "'-5'" in errors[1]
    assert "'0'" in errors[2] and "'201'" in errors[3] and "200" in errors[3]
    assert "'abc'" in errors[4]
    assert errors[5].startswith("text/plain")  # the value is echoed, so never as HTML


def test_unknown_removed_rejected_and_malformed_media_are_404(store, data_dir):
    kept, removed = illustrations(store, 2)
    store.execute("UPDATE media SET status = 'removed' WHERE id = ?", (removed,))
    _, outcomes = ingest_post(
        store,
        Post("x", "artist", "broken", media=(MediaRef("https://img.example.org/b"),)),
        lambda _ref: b"not an image at all",
        IngestConfig(progress=False),
    )
    rejected_sha = store.media(outcomes[0].media_id)["sha256"]
    removed_sha = store.media(removed)["sha256"]

    async def scenario(client):
        statuses = {}
        for path in [
            f"/media/{'0' * 64}",
            f"/thumb/{'0' * 64}",
            f"/media/{removed_sha}",
            f"/thumb/{removed_sha}",
            f"/media/{rejected_sha}",
            f"/thumb/{rejected_sha}",
            "/media/..%2F..%2Fillustfeed.db",
            "/media/../illustfeed.db",
            f"/media/{removed_sha.upper()}",
            "/thumb/abc",
            "/nothing-here",
            f"/media/{store.media(kept)['sha256']}",
        ]:
            statuses[path] = (await client.get(path)).status
        return statuses

    statuses = with_client(data_dir, scenario)
    assert statuses.pop(f"/media/{store.media(kept)['sha256']}") == 200
    assert set(statuses.values()) == {404}, statuses


def test_post_text_and_author_are_escaped_in_html_json_and_atom(store, data_dir):
    hostile = add_post(
        store,
        1,
        text="<script>alert(1)</script>",
        display_name="&<>\"'",
        alt='"><img src=x onerror=alert(2)>',
        url="javascript:alert(3)",
    )
    predict(store, hostile, "illustration")
    control = add_post(store, 2, account="other", text="bell\x07 and form feed\x0c in text")
    predict(store, control, "illustration")

    async def scenario(client):
        return (await get_text(client, "/"), await get_text(client, "/feed.atom"), await get_json(client, "/api/media"))

    page, atom, api = with_client(data_dir, scenario)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;&lt;&gt;&quot;&#x27;" in page
    assert "<img src=x" not in page and 'alt="&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"' in page
    assert "javascript:" not in page  # a post link that is not http(s) is not linked at all
    assert "<script>" not in atom and "javascript:" not in atom
    parsed = feedparser.parse(atom)
    assert not parsed.bozo, parsed.bozo_exception
    entry = next(e for e in parsed.entries if e.id.endswith(store.media(hostile)["sha256"]))
    assert entry.title == "<script>alert(1)</script>"
    assert entry.author == "&<>\"'"
    content = entry.content[0].value
    # feedparser sanitises HTML it considers dangerous; the text survives as escaped text.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content
    other = next(e for e in parsed.entries if e.id.endswith(store.media(control)["sha256"]))
    assert other.title == "bell and form feed in text"
    hostile_json = next(item for item in api["items"] if item["id"] == hostile)
    assert hostile_json["post"]["text"] == "<script>alert(1)</script>" and hostile_json["post"]["link"] is None


def test_atom_feed_is_valid_atom_with_images_in_content(store, data_dir):
    ids = illustrations(store, 3)
    settings = FeedConfig(public_url="https://feed.example.org/", atom_entries=2, title="My <illustrations>")

    async def scenario(client):
        response = await client.get("/feed.atom")
        assert response.headers["Content-Type"] == "application/atom+xml; charset=utf-8"
        again = await client.get("/feed.atom", headers={"If-None-Match": response.headers["ETag"]})
        return await response.text(), again.status

    atom, revalidated = with_client(data_dir, scenario, settings)
    parsed = feedparser.parse(atom)
    assert not parsed.bozo, parsed.bozo_exception
    assert parsed.version == "atom10"
    assert parsed.feed.title == "My <illustrations>"
    assert parsed.feed.links[0].href == "https://feed.example.org/feed.atom"
    assert revalidated == 304
    newest = store.media(ids[-1])
    assert [entry.id for entry in parsed.entries] == [
        f"urn:illustfeed:media:{store.media(media_id)['sha256']}" for media_id in ids[:0:-1]
    ]
    entry = parsed.entries[0]
    assert entry.link == "https://x.example.org/artist/2"
    assert entry.published == "2026-01-01T00:00:02Z" and entry.updated_parsed is not None
    assert entry.enclosures[0].href == f"https://feed.example.org/media/{newest['sha256']}"
    assert entry.enclosures[0].type == "image/png" and int(entry.enclosures[0].length) == newest["bytes"]
    assert f'src="https://feed.example.org/media/{newest["sha256"]}"' in entry.content[0].value
    assert entry.content[0].value.count("<img ") == 1
    assert entry.author == "artist"


def test_media_and_thumbnails_have_types_etags_and_304(store, data_dir):
    media_id = add_post(store, 4, image=make_image(4, size=(1200, 600), fmt="JPEG"))
    predict(store, media_id, "illustration")
    media = store.media(media_id)

    async def scenario(client):
        original = await client.get(f"/media/{media['sha256']}")
        original_bytes = await original.read()
        thumb = await client.get(f"/thumb/{media['sha256']}")
        thumb_bytes = await thumb.read()
        thumb_again = await client.get(f"/thumb/{media['sha256']}")
        not_modified = await client.get(
            f"/media/{media['sha256']}", headers={"If-None-Match": original.headers["ETag"]}
        )
        thumb_not_modified = await client.get(
            f"/thumb/{media['sha256']}", headers={"If-None-Match": f'W/"x", {thumb.headers["ETag"]}'}
        )
        stale = await client.get(f"/media/{media['sha256']}", headers={"If-None-Match": '"other"'})
        head = await client.head(f"/media/{media['sha256']}")
        return (
            original,
            original_bytes,
            thumb,
            thumb_bytes,
            thumb_again,
            not_modified,
            thumb_not_modified,
            stale.status,
            head,
        )

    (original, original_bytes, thumb, thumb_bytes, thumb_again, not_modified, thumb_not_modified, stale, head) = (
        with_client(data_dir, scenario)
    )
    assert original.status == 200 and original.headers["Content-Type"] == "image/jpeg"
    assert original_bytes == store.blobs.read(media["sha256"], "jpg")
    assert original.headers["ETag"] == f'"{media["sha256"]}"'
    assert "max-age" in original.headers["Cache-Control"]
    assert original.headers["Content-Disposition"] == "inline"
    assert not_modified.status == 304 and not_modified.headers["ETag"] == original.headers["ETag"]
    assert stale == 200 and head.status == 200 and head.headers["Content-Type"] == "image/jpeg"

    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/webp"
    assert thumb_again.headers["ETag"] == thumb.headers["ETag"] and thumb_not_modified.status == 304
    rows = store.query("SELECT * FROM thumbnails WHERE media_id = ?", (media_id,))
    assert len(rows) == 1 and rows[0]["spec"] == "webp-480" and (rows[0]["width"], rows[0]["height"]) == (480, 240)
    assert store.derived.read(rows[0]["sha256"], "webp") == thumb_bytes
    with Image.open(io.BytesIO(thumb_bytes)) as image:
        assert image.format == "WEBP" and image.size == (480, 240)
        background = image.convert("RGB").getpixel((2, 2))
    assert max(abs(a - b) for a, b in zip(background, COLOURS[4])) < 20


def test_jpeg_thumbnails_when_configured(store, data_dir):
    (media_id,) = illustrations(store, 1)
    sha = store.media(media_id)["sha256"]

    async def scenario(client):
        response = await client.get(f"/thumb/{sha}")
        return response.headers["Content-Type"], await response.read()

    content_type, data = with_client(data_dir, scenario, FeedConfig(thumbnail_format="jpeg", thumbnail_size=100))
    assert content_type == "image/jpeg"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (100, 75)


def test_healthz_reports_ok_and_counts(store, data_dir):
    illustrations(store, 2)
    photo = add_post(store, 9)
    predict(store, photo, "photo")
    add_post(store, 10)  # not classified yet

    body = with_client(data_dir, lambda client: get_json(client, "/healthz"))
    assert body["ok"] is True
    assert body["feed"] == 2 and body["media"] == 4 and body["posts"] == 4
    assert body["by_label"] == {"illustration": 2, "screenshot": 0, "photo": 1}


def test_healthz_is_503_naming_the_error_when_the_database_fails(store, data_dir):
    illustrations(store, 1)
    store.execute("DROP TABLE media_verdict")

    async def scenario(client):
        response = await client.get("/healthz")
        return response.status, await response.json()

    status, body = with_client(data_dir, scenario)
    assert status == 503 and body["ok"] is False and "media_verdict" in body["error"]


def test_concurrent_requests_make_one_thumbnail(store, data_dir):
    (media_id,) = illustrations(store, 1)
    sha = store.media(media_id)["sha256"]

    async def scenario(client):
        responses = await asyncio.gather(*(client.get(f"/thumb/{sha}") for _ in range(6)))
        return {response.status for response in responses}, {response.headers["ETag"] for response in responses}

    statuses, etags = with_client(data_dir, scenario)
    assert statuses == {200} and len(etags) == 1
    assert store.scalar("SELECT COUNT(*) FROM thumbnails WHERE media_id = ?", (media_id,)) == 1


def test_thumbnails_are_upright_and_composite_transparency_on_white(store, data_dir):
    rotated = Image.new("RGB", (400, 200), COLOURS[2])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    transparent = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    transparent.paste((200, 30, 30, 255), (100, 100, 200, 200))
    upright_id = add_post(store, 1, image=imagegen.encode(rotated, "JPEG", exif=exif))
    clear_id = add_post(store, 2, image=imagegen.encode(transparent, "PNG"))

    async def scenario(client):
        return [
            await (await client.get(f"/thumb/{store.media(media_id)['sha256']}")).read()
            for media_id in (upright_id, clear_id)
        ]

    upright, clear = (Image.open(io.BytesIO(data)).convert("RGB") for data in with_client(data_dir, scenario))
    assert upright.size == (200, 400)
    assert min(clear.getpixel((10, 10))) >= 245 and clear.getpixel((150, 150))[0] > 180


def test_one_authors_view_in_the_gallery_api_and_atom(store, data_dir):
    mine = [add_post(store, 40 + n, account="mika", display_name="Mika <M>") for n in range(3)]
    theirs = add_post(store, 50, account="other")
    for media_id in (*mine, theirs):
        predict(store, media_id, "illustration")
    screenshot = add_post(store, 51, account="mika")
    predict(store, screenshot, "screenshot")

    async def scenario(client):
        page = await get_text(client, "/?account=x:mika")
        body = await get_json(client, "/api/media?account=x:mika&limit=2")
        second = await get_json(client, f"/api/media?account=x:mika&limit=2&cursor={body['next_cursor']}")
        atom = await get_text(client, "/feed.atom?account=x:mika")
        nobody = await get_json(client, "/api/media?account=x:nobody")
        bad = await client.get("/api/media?account=mika")
        return page, body, second, atom, nobody, bad.status, await bad.json()

    page, body, second, atom, nobody, bad_status, bad = with_client(data_dir, scenario)
    assert tile_ids(page) == mine[::-1] and "Mika &lt;M&gt;" in page and "<M>" not in page
    assert 'href="/feed.atom?account=x%3Amika"' in page  # the author's own Atom feed
    assert api_ids(body) + api_ids(second) == mine[::-1] and second["next_cursor"] is None
    assert all(
        item["post"]["handle"] == "mika" and item["page_url"].endswith(f"/m/{item['id']}") for item in body["items"]
    )
    parsed = feedparser.parse(atom)
    assert len(parsed.entries) == 3 and "x:mika" in parsed.feed.title and parsed.feed.id.endswith(":x:mika")
    assert nobody["items"] == []
    assert bad_status == 400 and "SOURCE:HANDLE" in bad["error"]


def test_a_media_page_shows_the_whole_picture_the_post_and_who_decided(store, data_dir):
    decided = add_post(
        store,
        60,
        account="pat",
        display_name="Pat",
        text="a <b>fox</b> at dawn",
        url="https://x.example.org/pat/status/60",
    )
    predict(store, decided, "illustration")
    overruled = add_post(store, 61)
    predict(store, overruled, "illustration")
    review.record_label(store, overruled, "photo", by="owner", via="cli")
    unsure = add_post(store, 62)
    predict(store, unsure, "illustration", borderline=True)

    async def scenario(client):
        pages = [await get_text(client, f"/m/{media_id}") for media_id in (decided, overruled, unsure)]
        missing = await client.get("/m/999")
        return pages, missing.status

    (model_page, human_page, unsure_page), missing = with_client(data_dir, scenario)
    sha = store.media(decided)["sha256"]
    assert f'<img src="/media/{sha}"' in model_page and "a &lt;b&gt;fox&lt;/b&gt; at dawn" in model_page
    assert "illustration (decided by the model)" in model_page
    assert 'href="https://x.example.org/pat/status/60"' in model_page and 'href="/?account=x%3Apat"' in model_page
    assert "illustfeed label" in model_page  # no review page configured: says how to relabel
    assert "photo (decided by a human)" in human_page
    assert "undecided (waiting for review)" in unsure_page
    assert missing == 404

    async def with_review(client):
        return await get_text(client, f"/m/{decided}")

    page = with_client(data_dir, with_review, FeedConfig(review_token="t"))
    assert f'href="/review?media={decided}">wrong? relabel</a>' in page


def test_media_known_damaged_leave_the_gallery_api_and_atom_until_restored(store, data_dir):
    from storage.check import mark_damaged

    intact, damaged = illustrations(store, 2)
    mark_damaged(store, damaged, "wrong size: 10 bytes of 4096")

    async def scenario(client):
        return (
            tile_ids(await get_text(client, "/")),
            api_ids(await get_json(client, "/api/media")),
            await get_text(client, "/feed.atom"),
        )

    page, api, atom = with_client(data_dir, scenario)
    # A broken tile helps nobody: the media waits, out of sight, for the next crawl or import to restore it.
    assert page == [intact] and api == [intact]
    assert store.media(damaged)["sha256"] not in atom and store.media(intact)["sha256"] in atom
    store.restore_media(damaged)
    page, api, _atom = with_client(data_dir, scenario)
    assert page == [damaged, intact] and api == [damaged, intact]
