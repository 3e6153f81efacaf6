"""Bluesky source and crawl against a fake public AppView (payloads written from the app.bsky lexicons)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

import responses

from bot.ingest.crawl import crawl_once
from bot.sources.follows import follow, unfollow
from storage import Store
from tests.imagegen import picture
from tests.sources_support import FakeClock, crawl_config, http_for, make_jpeg, sha, world_fixture
from tests.videogen import HLS_PLAYLIST, panned_mp4

APPVIEW = "https://public.api.bsky.app"
PDS = "https://morel.us-east.host.bsky.network"


@dataclass
class FakeBluesky:
    clock: FakeClock
    profiles: dict[str, dict] = field(default_factory=dict)  # handle -> profileViewDetailed
    feeds: dict[str, list[dict]] = field(default_factory=dict)  # did -> feed items, newest first
    follows: dict[str, list[str]] = field(default_factory=dict)  # handle -> followed handles
    files: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    did_documents: dict[str, dict] = field(default_factory=dict)
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (did, cid) -> the uploaded file
    scripted: list[tuple[str, int, dict]] = field(default_factory=list)
    api_calls: list[tuple[str, dict]] = field(default_factory=list)
    media_calls: list[str] = field(default_factory=list)
    minute: int = 0

    def add_account(self, handle: str) -> str:
        did = f"did:plc:{hashlib.sha1(handle.encode()).hexdigest()[:24]}"
        # A profileViewDetailed as public.api.bsky.app answers getProfiles (fields of the recorded bsky.app answer).
        self.profiles[handle] = {
            "did": did,
            "handle": handle,
            "displayName": handle.split(".")[0].title(),
            "avatar": f"https://cdn.bsky.app/img/avatar/plain/{did}/bafkreiavatar@jpeg",
            "associated": {"lists": 0, "feedgens": 0, "starterPacks": 0, "labeler": False},
            "labels": [],
            "createdAt": "2024-02-06T18:47:47.372Z",
            "description": "art",
            "indexedAt": "2024-02-06T18:47:47.372Z",
            "followersCount": 10,
            "followsCount": 4,
            "postsCount": 3,
        }
        self.feeds[did] = []
        # Its DID document, as plc.directory serves it, naming the account's PDS.
        self.did_documents[did] = {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": did,
            "alsoKnownAs": [f"at://{handle}"],
            "verificationMethod": [
                {
                    "id": f"{did}#atproto",
                    "type": "Multikey",
                    "controller": did,
                    "publicKeyMultibase": "zQ3shXvCK2RyPrSLYQjBEw5CExZkUhJH3n1K2Mb9sC7JbvRMF",
                }
            ],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": PDS}],
        }
        return did

    def rename(self, old: str, new: str) -> None:
        """The account moves to a new handle: the old one resolves no more, posts show the new one."""
        profile = self.profiles.pop(old)
        profile["handle"] = new
        self.profiles[new] = profile
        for feed in self.feeds.values():
            for item in feed:
                if item["post"]["author"]["did"] == profile["did"]:
                    item["post"]["author"]["handle"] = new

    def video(self, handle: str, mp4: bytes, thumbnail: bytes) -> dict:
        """An app.bsky.embed.video#view (as the recorded bsky.app answer has it): its blob on the PDS."""
        did = self.profiles[handle]["did"]
        cid = "bafkrei" + hashlib.sha1(mp4).hexdigest()
        watch = f"https://video.bsky.app/watch/{quote(did, safe='')}/{cid}"
        self.files[f"{watch}/thumbnail.jpg"] = (200, thumbnail)
        self.files[f"{watch}/playlist.m3u8"] = (200, HLS_PLAYLIST)
        self.blobs[(did, cid)] = mp4
        return {
            "$type": "app.bsky.embed.video#view",
            "cid": cid,
            "playlist": f"{watch}/playlist.m3u8",
            "thumbnail": f"{watch}/thumbnail.jpg",
            "aspectRatio": {"height": 240, "width": 320},
            "presentation": "gif",
        }

    def author(self, handle: str) -> dict:
        profile = self.profiles[handle]
        return {"did": profile["did"], "handle": handle, "displayName": profile["displayName"]}

    def image(self, handle: str, body: bytes | None, alt: str = "", status: int = 200) -> dict:
        cid = "bafkrei" + hashlib.sha1((body or b"") + handle.encode() + bytes([len(self.files) % 256])).hexdigest()
        did = self.profiles[handle]["did"]
        fullsize = f"https://cdn.bsky.app/img/feed_fullsize/plain/{did}/{cid}@jpeg"
        self.files[fullsize] = (status, body or b"")
        return {
            "thumb": f"https://cdn.bsky.app/img/feed_thumbnail/plain/{did}/{cid}@jpeg",
            "fullsize": fullsize,
            "alt": alt,
            "aspectRatio": {"width": 96, "height": 64},
        }

    def _stamp(self) -> str:
        self.minute += 1
        return f"2026-11-20T10:{self.minute // 60:02d}:{self.minute % 60:02d}.000Z"

    def post(self, handle: str, text: str, embed: dict | None = None, repost_by: str | None = None) -> dict:
        rkey = f"3l{self.minute:06d}{handle[:3]}"
        stamp = self._stamp()
        view = {
            "uri": f"at://{self.profiles[handle]['did']}/app.bsky.feed.post/{rkey}",
            "cid": "bafyrei" + rkey,
            "author": self.author(handle),
            "record": {"$type": "app.bsky.feed.post", "text": text, "createdAt": stamp, "langs": ["en"]},
            "replyCount": 0,
            "repostCount": 0,
            "likeCount": 1,
            "indexedAt": stamp,
            "labels": [],
        }
        if embed is not None:
            view["embed"] = embed
        item = {"post": view}
        owner = handle
        if repost_by:
            owner = repost_by
            item["reason"] = {
                "$type": "app.bsky.feed.defs#reasonRepost",
                "by": self.author(repost_by),
                "indexedAt": self._stamp(),
            }
        self.feeds[self.profiles[owner]["did"]].insert(0, item)
        return view

    @staticmethod
    def images_embed(*images: dict) -> dict:
        return {"$type": "app.bsky.embed.images#view", "images": list(images)}

    def quote_with_media(self, quoted: dict, *images: dict) -> dict:
        record = {
            "$type": "app.bsky.embed.record#viewRecord",
            "uri": quoted["uri"],
            "cid": quoted["cid"],
            "author": quoted["author"],
            "value": quoted["record"],
            "indexedAt": quoted["indexedAt"],
            "embeds": [quoted["embed"]] if "embed" in quoted else [],
        }
        return {
            "$type": "app.bsky.embed.recordWithMedia#view",
            "record": {"record": record},
            "media": self.images_embed(*images),
        }

    def api(self, request):
        parts = urlsplit(request.url)
        params = parse_qs(parts.query)
        method = parts.path.rsplit("/", 1)[-1]
        self.api_calls.append((method, params))
        for index, (pattern, status, headers) in enumerate(self.scripted):
            if re.search(pattern, method):
                del self.scripted[index]
                return (
                    status,
                    {"content-type": "application/json", **headers},
                    json.dumps({"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}),
                )
        headers = {
            "content-type": "application/json",
            "ratelimit-limit": "3000",
            "ratelimit-remaining": "2999",
            "ratelimit-reset": str(int(self.clock.now) + 300),
            "ratelimit-policy": "3000;w=300",
        }
        if method == "app.bsky.actor.getProfiles":
            # An actor is a handle or a DID (lexicon format at-identifier); unknown ones are left out.
            by_did = {profile["did"]: profile for profile in self.profiles.values()}
            found = [self.profiles.get(actor) or by_did.get(actor) for actor in params["actors"]]
            return 200, headers, json.dumps({"profiles": [profile for profile in found if profile]})
        if method == "app.bsky.graph.getFollows":
            handle = params["actor"][0]
            return (
                200,
                headers,
                json.dumps(
                    self._page(
                        "follows",
                        [self.author(h) for h in self.follows[handle]],
                        params,
                        {"subject": self.author(handle)},
                    )
                ),
            )
        if method == "app.bsky.feed.getAuthorFeed":
            assert params["filter"] == ["posts_with_media"]
            return 200, headers, json.dumps(self._page("feed", self.feeds[params["actor"][0]], params, {}))
        return 400, headers, json.dumps({"error": "InvalidRequest", "message": f"unknown method {method}"})

    @staticmethod
    def _page(key: str, items: list, params: dict, extra: dict) -> dict:
        start = int(params.get("cursor", ["0"])[0])
        size = int(params.get("limit", ["50"])[0])
        body = {key: items[start : start + size], **extra}
        if start + size < len(items):
            body["cursor"] = str(start + size)
        return body

    def media_file(self, request):
        self.media_calls.append(request.url)
        status, body = self.files.get(request.url, (404, b""))
        if status != 200:
            return status, {"content-type": "application/json"}, json.dumps({"error": "NotFound"})
        kind = "application/vnd.apple.mpegurl" if request.url.endswith(".m3u8") else "image/jpeg"
        return 200, {"content-type": kind}, body

    def plc(self, request):
        self.api_calls.append(("plc", {}))
        document = self.did_documents.get(unquote(urlsplit(request.url).path.lstrip("/")))
        if document is None:
            return 404, {"content-type": "application/json"}, json.dumps({"message": "DID not registered"})
        return 200, {"content-type": "application/did+ld+json; charset=utf-8"}, json.dumps(document)

    def pds(self, request):
        self.media_calls.append(request.url)
        params = parse_qs(urlsplit(request.url).query)
        blob = self.blobs.get((params["did"][0], params["cid"][0]))
        if blob is None:
            return (
                400,
                {"content-type": "application/json"},
                json.dumps({"error": "BlobNotFound", "message": "Blob not found"}),
            )
        return 200, {"content-type": "video/mp4", "content-length": str(len(blob))}, blob

    def install(self, mock: responses.RequestsMock) -> None:
        mock.add_callback(
            responses.GET, re.compile(re.escape(APPVIEW) + r"/xrpc/.*"), callback=self.api, content_type=None
        )
        for host in ("cdn.bsky.app", "video.bsky.app"):
            mock.add_callback(
                responses.GET, re.compile(rf"https://{re.escape(host)}/.*"), callback=self.media_file, content_type=None
            )
        mock.add_callback(responses.GET, re.compile(r"https://plc\.directory/.*"), callback=self.plc, content_type=None)
        mock.add_callback(
            responses.GET,
            re.compile(re.escape(PDS) + r"/xrpc/com\.atproto\.sync\.getBlob.*"),
            callback=self.pds,
            content_type=None,
        )


def build_world(clock: FakeClock) -> tuple[FakeBluesky, dict[str, bytes]]:
    bsky = FakeBluesky(clock)
    bsky.add_account("mika.bsky.social")
    bsky.add_account("ren.example.com")
    images = {name: make_jpeg(seed) for seed, name in enumerate(["m1", "m2", "m3", "quote", "r1", "r2"], start=40)}
    first = bsky.post(
        "mika.bsky.social", "sketch", bsky.images_embed(bsky.image("mika.bsky.social", images["m1"], alt="a heron"))
    )
    bsky.post(
        "mika.bsky.social",
        "link card only",
        {
            "$type": "app.bsky.embed.external#view",
            "external": {"uri": "https://example.com", "title": "x", "description": "y"},
        },
    )
    bsky.post(
        "mika.bsky.social",
        "two",
        bsky.images_embed(bsky.image("mika.bsky.social", images["m2"]), bsky.image("mika.bsky.social", images["m3"])),
    )
    bsky.post("mika.bsky.social", "deleted", bsky.images_embed(bsky.image("mika.bsky.social", b"", status=404)))
    bsky.post("ren.example.com", "ren 1", bsky.images_embed(bsky.image("ren.example.com", images["r1"])))
    # ren quotes mika's heron and attaches a picture of their own: only ren's picture is ren's.
    bsky.post(
        "ren.example.com", "look at this", bsky.quote_with_media(first, bsky.image("ren.example.com", images["quote"]))
    )
    bsky.post("mika.bsky.social", "sketch", bsky.images_embed(first["embed"]["images"][0]), repost_by="ren.example.com")
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
        owners = store.query(
            "SELECT a.handle, pm.alt_text FROM post_media pm JOIN posts p ON p.id = pm.post_id "
            "JOIN accounts a ON a.id = p.account_id WHERE pm.media_id = ? ORDER BY a.handle",
            (heron,),
        )
        # mika's post and ren's repost share one media row; the quote post did not take the heron.
        assert [(row["handle"], row["alt_text"]) for row in owners] == [
            ("mika.bsky.social", "a heron"),
            ("ren.example.com", "a heron"),
        ]
        assert store.scalar("SELECT COUNT(*) FROM fetch_failures WHERE reason LIKE '%HTTP 404%'") == 1
        assert run.skipped_without_media == 1  # the link-card post
        # Several pages per account (limit 2).
        assert sum(1 for method, _ in bsky.api_calls if method == "app.bsky.feed.getAuthorFeed") == 4
        cursors = {row["handle"]: row["cursor"] for row in store.query("SELECT handle, cursor FROM accounts")}
        # The newest feed item's time: for ren that is the repost's, not the reposted post's.
        assert cursors == {
            "mika.bsky.social": "2026-11-20T10:00:04.000Z",
            "ren.example.com": "2026-11-20T10:00:09.000Z",
        }


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
        # Accounts are looked up by their stored DIDs (one read), so a changed handle would be noticed.
        lookups = [params["actors"] for method, params in bsky.api_calls if method == "app.bsky.actor.getProfiles"]
        assert [sorted(actors) for actors in lookups] == [
            sorted(bsky.profiles[handle]["did"] for handle in ("mika.bsky.social", "ren.example.com"))
        ]
        new = make_jpeg(99)
        bsky.post("mika.bsky.social", "new", bsky.images_embed(bsky.image("mika.bsky.social", new)))
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.total("media_new") == 1 and store.media_by_sha256(sha(new)) is not None


def test_429_with_a_far_reset_defers_the_account(world, tmp_path):
    bsky, images, clock = world
    bsky.scripted.append(
        ("getAuthorFeed", 429, {"ratelimit-remaining": "0", "ratelimit-reset": str(int(clock.now) + 3000)})
    )
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


def test_an_account_listed_by_did_is_resolved_and_crawled(world, tmp_path):
    bsky, images, clock = world
    did = bsky.profiles["mika.bsky.social"]["did"]
    config = bluesky_config(tmp_path, accounts=[did])
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        run = summary.runs[0]
        assert run.problems == [] and run.accounts == 1 and summary.total("media_new") == 3  # m1, m2, m3
        lookups = [params["actors"] for method, params in bsky.api_calls if method == "app.bsky.actor.getProfiles"]
        assert lookups == [[did]]
        assert store.query("SELECT handle, external_id, cursor FROM accounts") == [
            {"handle": "mika.bsky.social", "external_id": did, "cursor": "2026-11-20T10:00:04.000Z"}
        ]


def test_follow_by_did_is_crawled_and_the_row_takes_the_handle(world, tmp_path):
    bsky, images, clock = world
    did = bsky.profiles["ren.example.com"]["did"]
    config = bluesky_config(tmp_path, accounts=[])
    with Store.open(config.data_path) as store:
        assert follow(store, "bluesky", did)["was_followed"] is False
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.runs[0].accounts == 1 and summary.total("media_new") == 3  # r1, quote, r2
        rows = store.query("SELECT handle, external_id, followed, followed_via FROM accounts")
        assert rows == [{"handle": "ren.example.com", "external_id": did, "followed": 1, "followed_via": "command"}]
        # Following again by DID or unfollowing by DID finds the same row.
        assert follow(store, "bluesky", did)["was_followed"] is True
        unfollow(store, "bluesky", did)
        assert crawl_once(store, config, http=http_for(clock)).runs == []
        assert store.scalar("SELECT COUNT(*) FROM accounts") == 1


def test_a_renamed_handle_keeps_its_cursor_and_posts(world, tmp_path):
    bsky, images, clock = world
    config = bluesky_config(tmp_path)  # still lists mika (mika.bsky.social) after the rename
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        account_id, cursor = store.query_one(
            "SELECT id, cursor FROM accounts WHERE handle = 'mika.bsky.social'"
        ).values()
        posts_before = store.scalar("SELECT COUNT(*) FROM posts WHERE account_id = ?", (account_id,))

        bsky.rename("mika.bsky.social", "mika.art")
        new = make_jpeg(98)
        bsky.post("mika.art", "after the move", bsky.images_embed(bsky.image("mika.art", new)))
        bsky.api_calls.clear()
        for _run in range(2):  # the second run still finds the old name in the config
            summary = crawl_once(store, config, http=http_for(clock))
            assert summary.runs[0].problems == [] and summary.runs[0].accounts == 2
        assert store.media_by_sha256(sha(new)) is not None
        row = store.query_one(
            "SELECT id, handle, cursor FROM accounts WHERE external_id = ?", (bsky.profiles["mika.art"]["did"],)
        )
        assert row["id"] == account_id and row["handle"] == "mika.art" and row["cursor"] > cursor
        assert store.scalar("SELECT COUNT(*) FROM posts WHERE account_id = ?", (account_id,)) == posts_before + 1
        assert store.scalar("SELECT COUNT(*) FROM accounts") == 2
        # The stored cursor was used: one page of mika's feed per run, no backfill from scratch.
        feed_pages = [
            params
            for method, params in bsky.api_calls
            if method == "app.bsky.feed.getAuthorFeed" and params["actor"] == [bsky.profiles["mika.art"]["did"]]
        ]
        assert len(feed_pages) == 2 and all("cursor" not in params for params in feed_pages)


def test_videos_are_their_uploaded_file_from_the_pds_else_the_thumbnail(world, tmp_path):
    bsky, images, clock = world
    clip = panned_mp4(picture(41))
    too_big = panned_mp4(picture(42), size=(480, 360), frames=48)
    thumbnails = make_jpeg(43), make_jpeg(44)
    bsky.post("mika.bsky.social", "wip loop", bsky.video("mika.bsky.social", clip, thumbnails[0]))
    bsky.post("mika.bsky.social", "long one", bsky.video("mika.bsky.social", too_big, thumbnails[1]))
    config = crawl_config(
        tmp_path, {"bluesky": {"accounts": ["mika"], "page_size": 2}}, ingest={"max_bytes": len(too_big) - 1}
    )
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        video = store.media_by_sha256(sha(clip))
        assert video["mime"] == "video/mp4" and video["frames"] == 24 and video["duration_s"] == 2.0
        assert video["source_url"].startswith(f"{PDS}/xrpc/com.atproto.sync.getBlob?did=did%3Aplc%3A")
        # Over the byte limit: the thumbnail stands in; the HLS playlist is never fetched.
        assert store.media_by_sha256(sha(too_big)) is None
        assert store.media_by_sha256(sha(thumbnails[1]))["mime"] == "image/jpeg"
        assert not any(url.endswith(".m3u8") for url in bsky.media_calls)
        assert sum(1 for method, _ in bsky.api_calls if method == "plc") == 1  # the DID document, once per run
        assert store.scalar("SELECT COUNT(*) FROM fetch_failures WHERE reason NOT LIKE '%HTTP 404%'") == 0


def test_a_did_document_without_a_pds_leaves_the_thumbnail(world, tmp_path):
    bsky, images, clock = world
    did = bsky.profiles["mika.bsky.social"]["did"]
    bsky.did_documents[did]["service"] = []
    thumbnail = make_jpeg(45)
    bsky.post("mika.bsky.social", "clip", bsky.video("mika.bsky.social", panned_mp4(picture(46)), thumbnail))
    config = bluesky_config(tmp_path, accounts=["mika"])
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        assert store.media_by_sha256(sha(thumbnail))["mime"] == "image/jpeg"
        assert store.scalar("SELECT COUNT(*) FROM media WHERE mime LIKE 'video/%'") == 0
