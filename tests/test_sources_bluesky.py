"""Bluesky source and crawl against a fake public AppView (payloads written from the app.bsky lexicons)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import responses

from bot.ingest.crawl import crawl_once
from storage import Store
from tests.sources_support import FakeClock, crawl_config, http_for, make_jpeg, sha, world_fixture

APPVIEW = "https://public.api.bsky.app"


@dataclass
class FakeBluesky:
    clock: FakeClock
    profiles: dict[str, dict] = field(default_factory=dict)  # handle -> profileViewDetailed
    feeds: dict[str, list[dict]] = field(default_factory=dict)  # did -> feed items, newest first
    follows: dict[str, list[str]] = field(default_factory=dict)  # handle -> followed handles
    files: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    scripted: list[tuple[str, int, dict]] = field(default_factory=list)
    api_calls: list[tuple[str, dict]] = field(default_factory=list)
    media_calls: list[str] = field(default_factory=list)
    minute: int = 0

    def add_account(self, handle: str) -> str:
        did = f"did:plc:{hashlib.sha1(handle.encode()).hexdigest()[:24]}"
        self.profiles[handle] = {"did": did, "handle": handle, "displayName": handle.split(".")[0].title(),
                                 "followersCount": 10, "postsCount": 3}
        self.feeds[did] = []
        return did

    def author(self, handle: str) -> dict:
        profile = self.profiles[handle]
        return {"did": profile["did"], "handle": handle, "displayName": profile["displayName"]}

    def image(self, handle: str, body: bytes | None, alt: str = "", status: int = 200) -> dict:
        cid = "bafkrei" + hashlib.sha1((body or b"") + handle.encode() + bytes([len(self.files) % 256])).hexdigest()
        did = self.profiles[handle]["did"]
        fullsize = f"https://cdn.bsky.app/img/feed_fullsize/plain/{did}/{cid}@jpeg"
        self.files[fullsize] = (status, body or b"")
        return {"thumb": f"https://cdn.bsky.app/img/feed_thumbnail/plain/{did}/{cid}@jpeg", "fullsize": fullsize,
                "alt": alt, "aspectRatio": {"width": 96, "height": 64}}

    def _stamp(self) -> str:
        self.minute += 1
        return f"2026-11-20T10:{self.minute // 60:02d}:{self.minute % 60:02d}.000Z"

    def post(self, handle: str, text: str, embed: dict | None = None, repost_by: str | None = None) -> dict:
        rkey = f"3l{self.minute:06d}{handle[:3]}"
        stamp = self._stamp()
        view = {"uri": f"at://{self.profiles[handle]['did']}/app.bsky.feed.post/{rkey}", "cid": "bafyrei" + rkey,
                "author": self.author(handle),
                "record": {"$type": "app.bsky.feed.post", "text": text, "createdAt": stamp, "langs": ["en"]},
                "replyCount": 0, "repostCount": 0, "likeCount": 1, "indexedAt": stamp, "labels": []}
        if embed is not None:
            view["embed"] = embed
        item = {"post": view}
        owner = handle
        if repost_by:
            owner = repost_by
            item["reason"] = {"$type": "app.bsky.feed.defs#reasonRepost", "by": self.author(repost_by),
                              "indexedAt": self._stamp()}
        self.feeds[self.profiles[owner]["did"]].insert(0, item)
        return view

    @staticmethod
    def images_embed(*images: dict) -> dict:
        return {"$type": "app.bsky.embed.images#view", "images": list(images)}

    def quote_with_media(self, quoted: dict, *images: dict) -> dict:
        record = {"$type": "app.bsky.embed.record#viewRecord", "uri": quoted["uri"], "cid": quoted["cid"],
                  "author": quoted["author"], "value": quoted["record"], "indexedAt": quoted["indexedAt"],
                  "embeds": [quoted["embed"]] if "embed" in quoted else []}
        return {"$type": "app.bsky.embed.recordWithMedia#view", "record": {"record": record},
                "media": self.images_embed(*images)}

    def api(self, request):
        parts = urlsplit(request.url)
        params = parse_qs(parts.query)
        method = parts.path.rsplit("/", 1)[-1]
        self.api_calls.append((method, params))
        for index, (pattern, status, headers) in enumerate(self.scripted):
            if re.search(pattern, method):
                del self.scripted[index]
                return status, {"content-type": "application/json", **headers}, json.dumps(
                    {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"})
        headers = {"content-type": "application/json", "ratelimit-limit": "3000", "ratelimit-remaining": "2999",
                   "ratelimit-reset": str(int(self.clock.now) + 300), "ratelimit-policy": "3000;w=300"}
        if method == "app.bsky.actor.getProfiles":
            found = [self.profiles[actor] for actor in params["actors"] if actor in self.profiles]
            return 200, headers, json.dumps({"profiles": found})
        if method == "app.bsky.graph.getFollows":
            handle = params["actor"][0]
            return 200, headers, json.dumps(self._page("follows", [self.author(h) for h in self.follows[handle]],
                                                       params, {"subject": self.author(handle)}))
        if method == "app.bsky.feed.getAuthorFeed":
            assert params["filter"] == ["posts_with_media"]
            return 200, headers, json.dumps(self._page("feed", self.feeds[params["actor"][0]], params, {}))
        return 400, headers, json.dumps({"error": "InvalidRequest", "message": f"unknown method {method}"})

    @staticmethod
    def _page(key: str, items: list, params: dict, extra: dict) -> dict:
        start = int(params.get("cursor", ["0"])[0])
        size = int(params.get("limit", ["50"])[0])
        body = {key: items[start:start + size], **extra}
        if start + size < len(items):
            body["cursor"] = str(start + size)
        return body

    def media_file(self, request):
        self.media_calls.append(request.url)
        status, body = self.files.get(request.url, (404, b""))
        if status != 200:
            return status, {"content-type": "application/json"}, json.dumps({"error": "NotFound"})
        return 200, {"content-type": "image/jpeg"}, body

    def install(self, mock: responses.RequestsMock) -> None:
        mock.add_callback(responses.GET, re.compile(re.escape(APPVIEW) + r"/xrpc/.*"), callback=self.api,
                          content_type=None)
        mock.add_callback(responses.GET, re.compile(r"https://cdn\.bsky\.app/.*"), callback=self.media_file,
                          content_type=None)


def build_world(clock: FakeClock) -> tuple[FakeBluesky, dict[str, bytes]]:
    bsky = FakeBluesky(clock)
    bsky.add_account("mika.bsky.social")
    bsky.add_account("ren.example.com")
    images = {name: make_jpeg(seed) for seed, name in enumerate(["m1", "m2", "m3", "quote", "r1", "r2"], start=40)}
    first = bsky.post("mika.bsky.social", "sketch", bsky.images_embed(bsky.image("mika.bsky.social", images["m1"],
                                                                                 alt="a heron")))
    bsky.post("mika.bsky.social", "link card only", {"$type": "app.bsky.embed.external#view", "external": {
        "uri": "https://example.com", "title": "x", "description": "y"}})
    bsky.post("mika.bsky.social", "two", bsky.images_embed(bsky.image("mika.bsky.social", images["m2"]),
                                                           bsky.image("mika.bsky.social", images["m3"])))
    bsky.post("mika.bsky.social", "deleted", bsky.images_embed(bsky.image("mika.bsky.social", b"", status=404)))
    bsky.post("ren.example.com", "ren 1", bsky.images_embed(bsky.image("ren.example.com", images["r1"])))
    # ren quotes mika's heron and attaches a picture of their own: only ren's picture is ren's.
    bsky.post("ren.example.com", "look at this",
              bsky.quote_with_media(first, bsky.image("ren.example.com", images["quote"])))
    bsky.post("mika.bsky.social", "sketch", bsky.images_embed(first["embed"]["images"][0]),
              repost_by="ren.example.com")
    bsky.post("ren.example.com", "ren 2", bsky.images_embed(bsky.image("ren.example.com", images["r2"])))
    return bsky, images


def bluesky_config(tmp_path, **settings):
    return crawl_config(tmp_path, {"bluesky": {"accounts": ["mika", "@ren.example.com"], "page_size": 2, **settings}})


world = world_fixture(build_world)


def test_crawl_stores_images_quotes_and_links_reposts(world, tmp_path):
    bsky, images, clock = world
    config = bluesky_config(tmp_path, include_reposts=True)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        run = summary.runs[0]
        assert run.source == "bluesky" and run.error is None and run.accounts == 2
        stored = sorted(row["sha256"] for row in store.query("SELECT sha256 FROM media"))
        assert stored == sorted(sha(images[name]) for name in ("m1", "m2", "m3", "quote", "r1", "r2"))
        heron = store.scalar("SELECT id FROM media WHERE sha256 = ?", (sha(images["m1"]),))
        owners = store.query("SELECT a.handle, pm.alt_text FROM post_media pm JOIN posts p ON p.id = pm.post_id "
                             "JOIN accounts a ON a.id = p.account_id WHERE pm.media_id = ? ORDER BY a.handle", (heron,))
        # mika's post and ren's repost share one media row; the quote post did not take the heron.
        assert [(row["handle"], row["alt_text"]) for row in owners] == [("mika.bsky.social", "a heron"),
                                                                       ("ren.example.com", "a heron")]
        assert store.scalar("SELECT COUNT(*) FROM fetch_failures WHERE reason LIKE '%HTTP 404%'") == 1
        assert run.skipped_without_media == 1  # the link-card post
        # Several pages per account (limit 2).
        assert sum(1 for method, _ in bsky.api_calls if method == "app.bsky.feed.getAuthorFeed") == 4
        cursors = {row["handle"]: row["cursor"] for row in store.query("SELECT handle, cursor FROM accounts")}
        # The newest feed item's time: for ren that is the repost's, not the reposted post's.
        assert cursors == {"mika.bsky.social": "2026-11-20T10:00:04.000Z",
                           "ren.example.com": "2026-11-20T10:00:09.000Z"}


def test_second_run_reads_one_page_and_stores_nothing(world, tmp_path):
    bsky, images, clock = world
    config = bluesky_config(tmp_path)
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        counts = store.scalar("SELECT COUNT(*) FROM media"), store.scalar("SELECT COUNT(*) FROM post_media")
        bsky.api_calls.clear()
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.total("media_new") == 0 and summary.total("new_posts") == 0
        assert (store.scalar("SELECT COUNT(*) FROM media"), store.scalar("SELECT COUNT(*) FROM post_media")) == counts
        feed_calls = [params for method, params in bsky.api_calls if method == "app.bsky.feed.getAuthorFeed"]
        assert len(feed_calls) == 2 and all("cursor" not in params for params in feed_calls)
        assert not any(method == "app.bsky.actor.getProfiles" for method, _ in bsky.api_calls)
        new = make_jpeg(99)
        bsky.post("mika.bsky.social", "new", bsky.images_embed(bsky.image("mika.bsky.social", new)))
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.total("media_new") == 1 and store.media_by_sha256(sha(new)) is not None


def test_429_with_a_far_reset_defers_the_account(world, tmp_path):
    bsky, images, clock = world
    bsky.scripted.append(("getAuthorFeed", 429, {"ratelimit-remaining": "0",
                                                 "ratelimit-reset": str(int(clock.now) + 3000)}))
    config = bluesky_config(tmp_path)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.deferred == 1 and clock.sleeps == []
        assert summary.total("media_new") == 3  # ren's r1, quote, r2
        bsky.scripted.append(("getAuthorFeed", 429, {"ratelimit-reset": str(int(clock.now) + 5)}))
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.deferred == 0 and clock.sleeps == [6]
        assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'") == 6


def test_following_of_lists_follows_over_pages(world, tmp_path, monkeypatch):
    bsky, images, clock = world
    monkeypatch.setattr("bot.sources.bluesky.FOLLOWS_PAGE", 1)
    bsky.add_account("me.bsky.social")
    bsky.follows["me.bsky.social"] = ["mika.bsky.social", "ren.example.com"]
    config = bluesky_config(tmp_path, accounts=[], following_of="me")
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.accounts == 2 and summary.total("media_new") == 6
        assert store.scalar("SELECT COUNT(*) FROM posts WHERE external_id LIKE '%#repost%'") == 0  # off by default
        assert sum(1 for method, _ in bsky.api_calls if method == "app.bsky.graph.getFollows") == 2
