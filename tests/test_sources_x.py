"""X source and crawl against a fake X API v2 served through `responses` (payloads written from the API docs)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from bot.ingest.crawl import crawl_once
from storage import Store
from tests.imagegen import picture
from tests.sources_support import FakeClock, crawl_config, http_for, make_jpeg, sha, world_fixture
from tests.videogen import HLS_PLAYLIST, panned_mp4

API = "https://api.twitter.com"


@dataclass
class FakeX:
    """An in-memory X: users, timelines (newest first), media objects and the files behind their URLs."""

    clock: FakeClock
    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (username, name)
    timelines: dict[str, list[dict]] = field(default_factory=dict)  # user id -> tweets, newest first
    media: dict[str, dict] = field(default_factory=dict)  # media_key -> includes.media object
    originals: dict[str, dict] = field(default_factory=dict)  # retweeted tweets, for includes.tweets
    following: dict[str, list[str]] = field(default_factory=dict)  # user id -> followed user ids
    files: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)  # url -> (status, content type, body)
    no_includes: set[str] = field(default_factory=set)  # tweet ids whose media are left out of includes
    scripted: list[tuple[str, int, dict]] = field(default_factory=list)  # (path regex, status, headers), once each
    api_calls: list[tuple[str, dict]] = field(default_factory=list)
    media_calls: list[str] = field(default_factory=list)
    next_key: int = 0

    def add_user(self, user_id: str, username: str) -> None:
        self.users[user_id] = (username, username.title())
        self.timelines.setdefault(user_id, [])

    def photo(
        self,
        body: bytes | None,
        url: str | None = None,
        alt: str | None = None,
        orig_status: int = 200,
        content_type: str = "image/jpeg",
    ) -> str:
        self.next_key += 1
        key = f"3_{self.next_key}"
        url = url or f"https://pbs.twimg.com/media/F{self.next_key}xYz.jpg"
        self.media[key] = {
            "media_key": key,
            "type": "photo",
            "url": url,
            "width": 96,
            "height": 64,
            **({"alt_text": alt} if alt else {}),
        }
        base = url.rsplit(".", 1)[0]
        for name in ("orig", "4096x4096", "large"):
            status = orig_status if name == "orig" else 200
            if body is not None:
                self.files[f"{base}?format=jpg&name={name}"] = (status, content_type, body if status == 200 else b"")
        return key

    def animated(self, kind: str, mp4: bytes | dict[str, bytes], preview: bytes) -> str:
        """A GIF (one MP4 variant) or a video (MP4s at three sizes and HLS, as X lists them) with its preview.

        `mp4` is served at every MP4 variant, or per size ("320x180", "640x360", "1280x720") for a video.
        """
        self.next_key += 1
        number = self.next_key
        if kind == "animated_gif":
            key, preview_url = f"16_{number}", f"https://pbs.twimg.com/tweet_video_thumb/G{number}.jpg"
            variants = [
                {
                    "bit_rate": 0,
                    "content_type": "video/mp4",
                    "url": f"https://video.twimg.com/tweet_video/G{number}.mp4",
                }
            ]
        else:
            key, preview_url = f"7_{number}", f"https://pbs.twimg.com/ext_tw_video_thumb/{number}/pu/img/V{number}.jpg"
            base = f"https://video.twimg.com/ext_tw_video/{number}/pu"
            variants = [
                {"bit_rate": 832000, "content_type": "video/mp4", "url": f"{base}/vid/640x360/sY{number}.mp4?tag=12"},
                {"bit_rate": 256000, "content_type": "video/mp4", "url": f"{base}/vid/320x180/SO{number}.mp4?tag=12"},
                {"bit_rate": 2176000, "content_type": "video/mp4", "url": f"{base}/vid/1280x720/Tq{number}.mp4?tag=12"},
                {"content_type": "application/x-mpegURL", "url": f"{base}/pl/Yl{number}.m3u8?tag=12&container=fmp4"},
            ]
        self.media[key] = {
            "media_key": key,
            "type": kind,
            "preview_image_url": preview_url,
            "width": 640,
            "height": 360,
            "duration_ms": 2000,
            "variants": variants,
        }
        self.files[preview_url] = (200, "image/jpeg", preview)
        for variant in variants:
            if variant["content_type"] == "video/mp4":
                size = re.search(r"/(\d+x\d+)/", variant["url"])
                body = mp4 if isinstance(mp4, bytes) else mp4.get(size[1] if size else "", b"")
                if body:
                    self.files[variant["url"]] = (200, "video/mp4", body)
            else:
                self.files[variant["url"]] = (200, "application/x-mpegURL", HLS_PLAYLIST)
        return key

    def tweet(
        self, user_id: str, tweet_id: str, media_keys: list[str] = (), text: str = "art", retweet_of: str | None = None
    ) -> None:
        tweet = {
            "id": tweet_id,
            "text": text,
            "created_at": "2026-11-20T10:00:00.000Z",
            "author_id": user_id,
            "edit_history_tweet_ids": [tweet_id],
        }
        if media_keys:
            tweet["attachments"] = {"media_keys": list(media_keys)}
        if retweet_of:
            tweet["referenced_tweets"] = [{"type": "retweeted", "id": retweet_of}]
            tweet["text"] = f"RT @someone: {text}"
        self.timelines[user_id].insert(0, tweet)

    def original(self, tweet_id: str, author_id: str, media_keys: list[str]) -> None:
        self.originals[tweet_id] = {
            "id": tweet_id,
            "text": "original",
            "author_id": author_id,
            "attachments": {"media_keys": media_keys},
            "edit_history_tweet_ids": [tweet_id],
        }

    # HTTP --------------------------------------------------------------------------------------------

    def _limit_headers(self) -> dict:
        return {
            "x-rate-limit-limit": "1500",
            "x-rate-limit-remaining": "1400",
            "x-rate-limit-reset": str(int(self.clock.now) + 900),
            "content-type": "application/json",
        }

    def _scripted(self, path: str):
        for index, (pattern, status, headers) in enumerate(self.scripted):
            if re.search(pattern, path):
                del self.scripted[index]
                body = (
                    {
                        "title": "Too Many Requests",
                        "detail": "Too Many Requests",
                        "type": "about:blank",
                        "status": status,
                    }
                    if status == 429
                    else {"title": "error", "status": status, "detail": f"scripted {status}"}
                )
                if status == 403:
                    body = {
                        "title": "Client Forbidden",
                        "reason": "client-not-enrolled",
                        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use "
                        "keys and tokens from a Twitter developer App that is attached to a Project.",
                        "required_enrollment": "Appropriate Level of API Access",
                        "type": "https://api.twitter.com/2/problems/client-forbidden",
                    }
                return status, {"content-type": "application/json", **headers}, json.dumps(body)
        return None

    def api(self, request):
        parts = urlsplit(request.url)
        params = {key: values[0] for key, values in parse_qs(parts.query).items()}
        self.api_calls.append((parts.path, params))
        scripted = self._scripted(parts.path)
        if scripted is not None:
            return scripted
        if parts.path == "/2/users/by":
            names = params["usernames"].split(",")
            found = [
                {"id": uid, "username": name, "name": display}
                for uid, (name, display) in self.users.items()
                if name.lower() in [n.lower() for n in names]
            ]
            missing = [n for n in names if n.lower() not in [u["username"].lower() for u in found]]
            body = {"data": found} if found else {}
            if missing:
                body["errors"] = [
                    {
                        "value": n,
                        "detail": f"Could not find user with usernames: [{n}].",
                        "title": "Not Found Error",
                        "resource_type": "user",
                        "parameter": "usernames",
                        "resource_id": n,
                        "type": "https://api.twitter.com/2/problems/resource-not-found",
                    }
                    for n in missing
                ]
            return 200, self._limit_headers(), json.dumps(body)
        match = re.fullmatch(r"/2/users/(\d+)/following", parts.path)
        if match:
            ids = self.following.get(match.group(1), [])
            start = int(params.get("pagination_token", 0))
            size = int(params.get("max_results", 100))
            page = ids[start : start + size]
            body = {
                "data": [{"id": uid, "username": self.users[uid][0], "name": self.users[uid][1]} for uid in page],
                "meta": {"result_count": len(page)},
            }
            if start + size < len(ids):
                body["meta"]["next_token"] = str(start + size)
            return 200, self._limit_headers(), json.dumps(body)
        match = re.fullmatch(r"/2/users/(\d+)/tweets", parts.path)
        if match:
            return 200, self._limit_headers(), json.dumps(self._timeline_page(match.group(1), params))
        return 404, {"content-type": "application/json"}, json.dumps({"title": "Not Found"})

    def _timeline_page(self, user_id: str, params: dict) -> dict:
        excluded = params.get("exclude", "").split(",")
        tweets = [
            t for t in self.timelines.get(user_id, []) if not ("retweets" in excluded and "referenced_tweets" in t)
        ]
        if "since_id" in params:
            tweets = [t for t in tweets if int(t["id"]) > int(params["since_id"])]
        start = int(params.get("pagination_token", 0))
        size = int(params.get("max_results", 10))
        page = tweets[start : start + size]
        if not page:
            return {"meta": {"result_count": 0}}
        keys, referenced = [], []
        for tweet in page:
            if tweet["id"] in self.no_includes:
                continue
            keys += tweet.get("attachments", {}).get("media_keys", [])
            for ref in tweet.get("referenced_tweets", []):
                if ref["id"] in self.originals and "referenced_tweets.id" in params.get("expansions", ""):
                    referenced.append(self.originals[ref["id"]])
                    keys += self.originals[ref["id"]]["attachments"]["media_keys"]
        body = {
            "data": page,
            "meta": {"newest_id": page[0]["id"], "oldest_id": page[-1]["id"], "result_count": len(page)},
        }
        includes = {}
        if keys:
            includes["media"] = [self.media[key] for key in dict.fromkeys(keys) if key in self.media]
        if referenced:
            includes["tweets"] = referenced
        if includes:
            body["includes"] = includes
        if start + size < len(tweets):
            body["meta"]["next_token"] = str(start + size)
        return body

    def media_file(self, request):
        self.media_calls.append(request.url)
        scripted = self._scripted(urlsplit(request.url).path)
        if scripted is not None:
            return scripted
        status, content_type, body = self.files.get(request.url, (404, "text/html", b"<html>Not Found</html>"))
        return status, {"content-type": content_type}, body

    def install(self, mock: responses.RequestsMock) -> None:
        mock.add_callback(responses.GET, re.compile(re.escape(API) + r"/2/.*"), callback=self.api, content_type=None)
        for host in ("pbs.twimg.com", "video.twimg.com", "evil.example.com"):
            mock.add_callback(
                responses.GET, re.compile(rf"https://{re.escape(host)}/.*"), callback=self.media_file, content_type=None
            )


def x_config(tmp_path, **x_settings):
    settings = {
        "bearer_token": "test-bearer",
        "accounts": ["alice", "bob"],
        "page_size": 5,
        "backfill_tweets": 100,
        **x_settings,
    }
    return crawl_config(tmp_path, {"x": settings}, ingest={"max_bytes": 200_000})


def build_world(clock: FakeClock) -> tuple[FakeX, dict[str, bytes]]:
    """Two accounts over two pages each, covering every media case the crawl must handle."""
    x = FakeX(clock)
    x.add_user("101", "alice")
    x.add_user("202", "bob")
    images = {
        name: make_jpeg(seed)
        for seed, name in enumerate(["p1", "p2", "p3", "gif", "video", "deleted", "b1", "b2", "b3"], start=1)
    }
    images["gif.mp4"] = panned_mp4(picture(11))
    images["video.mp4"] = panned_mp4(picture(12), size=(480, 270), frames=36)
    p1 = x.photo(images["p1"], alt="a fox")
    x.tweet("101", "1001", text="text only, no media")
    x.tweet("101", "1002", [p1])
    # p3's original size is gone (404): the 4096x4096 rendition is served instead.
    x.tweet("101", "1003", [x.photo(images["p2"]), x.photo(images["p3"], orig_status=404)])
    x.tweet("101", "1004", [x.animated("animated_gif", images["gif.mp4"], images["gif"])])
    x.tweet("101", "1005", [x.animated("video", images["video.mp4"], images["video"])])
    deleted = x.photo(images["deleted"])
    for url in [u for u in x.files if "F" + deleted.split("_")[1] + "xYz" in u]:
        x.files[url] = (404, "text/html", b"<html>gone</html>")
    x.tweet("101", "1006", [deleted])
    x.tweet("101", "1007", [x.photo(b"<html><body>withheld in your country</body></html>")])
    x.tweet("101", "1008", [x.photo(b"\xff\xd8\xff" + bytes(300_000))])  # over ingest.max_bytes
    x.tweet("101", "1009", ["3_999"])  # a media key with no includes entry
    x.tweet("101", "1010", [x.photo(images["p1"], url="https://evil.example.com/media/E1.jpg")])
    x.original("1002", "101", [p1])
    x.tweet("202", "2001", [x.photo(images["b1"])])
    x.tweet("202", "2002", [x.photo(images["b2"])])
    x.tweet("202", "2003", [p1], retweet_of="1002")  # bob retweets alice's fox
    x.tweet("202", "2004", text="just words")
    x.tweet("202", "2005", [x.photo(images["b3"])])
    x.tweet("202", "2006", text="more words")
    x.tweet("202", "2007", text="and more")
    # bob's second page (2002, 2001) comes without any `includes`: those tweets are skipped, not crashed on.
    x.no_includes.update({"2001", "2002"})
    return x, images


world = world_fixture(build_world)


def media_count(store: Store) -> int:
    return store.scalar("SELECT COUNT(*) FROM media")


def stored_sha256s(store: Store) -> list[str]:
    return sorted(row["sha256"] for row in store.query("SELECT sha256 FROM media WHERE status = 'ok'"))


def test_first_crawl_stores_every_image_once_and_records_failures(world, tmp_path):
    x, images, clock = world
    config = x_config(tmp_path, include_retweets=True)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        run = summary.runs[0]
        assert run.error is None, run.error
        assert run.accounts == 2
        # alice: 1002 p1, 1003 p2+p3, 1004 gif, 1005 video; bob: 2005 b3 (+ the retweet dup).
        expected = sorted(sha(images[n]) for n in ("p1", "p2", "p3", "gif.mp4", "video.mp4", "b3"))
        assert stored_sha256s(store) == expected
        assert summary.total("media_new") == 6
        # The retweet links the stored fox to bob's post instead of storing it again.
        fox = store.scalar("SELECT id FROM media WHERE sha256 = ?", (sha(images["p1"]),))
        linked = store.query(
            "SELECT p.external_id, pm.alt_text FROM post_media pm JOIN posts p ON p.id = pm.post_id "
            "WHERE pm.media_id = ? ORDER BY p.external_id",
            (fox,),
        )
        assert [row["external_id"] for row in linked] == ["1002", "2003"]
        assert linked[0]["alt_text"] == "a fox"
        # The non-image body behind an image URL is a rejected media row with a reason.
        rejected = store.query("SELECT reject_reason FROM media WHERE status = 'rejected'")
        assert len(rejected) == 1 and "not an image" in rejected[0]["reject_reason"]
        failures = {row["post_external_id"]: row for row in store.query("SELECT * FROM fetch_failures")}
        assert set(failures) == {"1006", "1008", "1010"}
        assert "HTTP 404" in failures["1006"]["reason"] and failures["1006"]["given_up"] == 0
        assert "over the limit" in failures["1008"]["reason"] and failures["1008"]["given_up"] == 1
        assert "allow-list" in failures["1010"]["reason"] and failures["1010"]["given_up"] == 1
        # Original size first, then the fallback for p3.
        p3_calls = [url for url in x.media_calls if "F3xYz" in url]
        assert p3_calls == [
            "https://pbs.twimg.com/media/F3xYz?format=jpg&name=orig",
            "https://pbs.twimg.com/media/F3xYz?format=jpg&name=4096x4096",
        ]
        # GIFs and videos are stored as MP4 (the video's 720p variant: the smallest at least 480 px high),
        # with their length and frame count; neither the previews nor the HLS playlist are fetched.
        videos = store.query("SELECT mime, frames, duration_s, width FROM media WHERE mime = 'video/mp4' ORDER BY id")
        assert [(row["frames"], row["duration_s"], row["width"]) for row in videos] == [(24, 2.0, 320), (36, 3.0, 480)]
        assert [url for url in x.media_calls if "video.twimg.com" in url] == [
            "https://video.twimg.com/tweet_video/G4.mp4",
            "https://video.twimg.com/ext_tw_video/5/pu/vid/1280x720/Tq5.mp4?tag=12",
        ]
        assert not any("_thumb/" in url for url in x.media_calls)
        cursors = {row["handle"]: row["cursor"] for row in store.query("SELECT handle, cursor FROM accounts")}
        assert cursors == {"alice": "1010", "bob": "2007"}
        assert run.reads == 5  # users/by + 2 pages each
        assert store.scalar("SELECT reads FROM api_usage WHERE source = 'x'") == 5
        assert summary.text().startswith("x: 2 accounts (0 deferred)")


def test_second_run_sends_since_id_and_stores_nothing_twice(world, tmp_path):
    x, images, clock = world
    config = x_config(tmp_path, include_retweets=True)
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        before = (
            media_count(store),
            store.scalar("SELECT COUNT(*) FROM posts"),
            store.scalar("SELECT COUNT(*) FROM post_media"),
        )
        x.api_calls.clear()
        summary = crawl_once(store, config, http=http_for(clock))
        timeline_calls = [params for path, params in x.api_calls if path.endswith("/tweets")]
        assert [params.get("since_id") for params in timeline_calls] == ["1010", "2007"]
        assert not any(path == "/2/users/by" for path, _ in x.api_calls)  # ids are known from the store
        assert (
            media_count(store),
            store.scalar("SELECT COUNT(*) FROM posts"),
            store.scalar("SELECT COUNT(*) FROM post_media"),
        ) == before
        assert summary.total("media_new") == 0
        # A new tweet afterwards is the only thing the third run stores.
        x.tweet("101", "1011", [x.photo(make_jpeg(77))])
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.total("media_new") == 1 and media_count(store) == before[0] + 1
        assert store.scalar("SELECT cursor FROM accounts WHERE handle = 'alice'") == "1011"


def test_failed_media_is_retried_on_a_later_run(world, tmp_path):
    x, images, clock = world
    config = x_config(tmp_path)
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        assert store.scalar("SELECT attempts FROM fetch_failures WHERE post_external_id = '1006'") == 1
        crawl_once(store, config, http=http_for(clock))  # still 404: one more attempt recorded
        assert store.scalar("SELECT attempts FROM fetch_failures WHERE post_external_id = '1006'") == 2
        for url in [u for u in x.files if "F6xYz" in u]:
            x.files[url] = (200, "image/jpeg", images["deleted"])
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.runs[0].recovered == 1
        row = store.query_one("SELECT resolved_at FROM fetch_failures WHERE post_external_id = '1006'")
        assert row["resolved_at"] is not None
        linked = store.scalar(
            "SELECT COUNT(*) FROM post_media pm JOIN posts p ON p.id = pm.post_id WHERE p.external_id = '1006'"
        )
        assert linked == 1
        # Refused downloads (oversized, foreign host) are never retried.
        calls = len(x.media_calls)
        crawl_once(store, config, http=http_for(clock))
        assert not any("evil.example.com" in url for url in x.media_calls[calls:])


def test_short_429_waits_for_the_reset_then_continues(world, tmp_path):
    x, images, clock = world
    x.scripted.append(
        (r"/2/users/101/tweets", 429, {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(clock.now) + 20)})
    )
    config = x_config(tmp_path)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.deferred == 0 and summary.total("media_new") == 6
        assert 20 <= clock.sleeps[0] <= 22


def test_long_429_defers_the_account_and_goes_on(world, tmp_path):
    x, images, clock = world
    x.scripted.append(
        (r"/2/users/101/tweets", 429, {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(clock.now) + 900)})
    )
    config = x_config(tmp_path)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.deferred == 1 and clock.sleeps == []
        accounts = {row["handle"]: row for row in store.query("SELECT * FROM accounts")}
        assert accounts["alice"]["cursor"] is None and "429" in accounts["alice"]["last_error"]
        assert accounts["bob"]["cursor"] == "2007"
        assert "@alice deferred to the next run" in summary.text()
        # The next run crawls alice (it was crawled longest ago, so first).
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.deferred == 0 and store.scalar("SELECT cursor FROM accounts WHERE handle = 'alice'") == "1010"


def test_503_is_retried_with_backoff(world, tmp_path):
    x, images, clock = world
    x.scripted.append((r"/2/users/202/tweets", 503, {}))
    x.scripted.append((r"/media/F1xYz", 503, {}))
    config = x_config(tmp_path)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.runs[0].problems == [] and summary.total("failed") == 3
        assert summary.total("media_new") == 6
        assert len(clock.sleeps) == 2 and all(0.5 <= s <= 1.0 for s in clock.sleeps)


def test_401_stops_the_source_with_a_clear_message(world, tmp_path):
    x, images, clock = world
    x.scripted.append((r"/2/users/by", 401, {}))
    config = x_config(tmp_path)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        assert "401" in summary.runs[0].error and "ILLUSTFEED_X_BEARER_TOKEN" in summary.runs[0].error
        assert media_count(store) == 0 and len(x.api_calls) == 1


def test_403_on_following_is_reported_and_the_list_still_runs(world, tmp_path):
    x, images, clock = world
    x.add_user("303", "carol")
    x.scripted.append((r"/following", 403, {}))
    config = x_config(tmp_path, accounts=["alice"], following_of="carol")
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        run = summary.runs[0]
        assert run.error is None and run.accounts == 1
        assert any("following list of @carol" in p and "403" in p and "tier" in p for p in run.problems)
        assert summary.total("media_new") == 5


def test_following_of_pages_through_the_followed_accounts(world, tmp_path):
    x, images, clock = world
    x.add_user("303", "carol")
    x.following["303"] = ["101", "202"]
    config = x_config(tmp_path, accounts=[], following_of="carol")
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.accounts == 2 and summary.total("media_new") == 6


def test_daily_read_budget_caps_requests_and_persists(world, tmp_path):
    x, images, clock = world
    config = x_config(tmp_path, daily_read_budget=3)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        run = summary.runs[0]
        # users/by and alice's two pages; bob waits.
        assert run.reads == 3 and "budget" in run.error and run.deferred == 1
        cursors = {row["handle"]: row["cursor"] for row in store.query("SELECT handle, cursor FROM accounts")}
        assert cursors == {"alice": "1010", "bob": None}
        calls = len(x.api_calls)
        summary = crawl_once(store, config, http=http_for(clock))
        assert len(x.api_calls) == calls and summary.runs[0].reads_today == 3 and summary.deferred == 2
        clock.now += 86_400  # a new UTC day brings a fresh budget; bob, never crawled, goes first
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.runs[0].reads == 3 and summary.runs[0].error is None
        assert store.scalar("SELECT cursor FROM accounts WHERE handle = 'bob'") == "2007"


def test_missing_credentials_are_named(tmp_path):
    config = x_config(tmp_path, bearer_token="")
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(FakeClock()))
    assert "ILLUSTFEED_X_BEARER_TOKEN" in summary.runs[0].error


def test_photo_urls_ask_for_the_original_size():
    from bot.sources.x import photo_candidates

    assert photo_candidates("https://pbs.twimg.com/media/FoO7abc.png") == [
        "https://pbs.twimg.com/media/FoO7abc?format=png&name=orig",
        "https://pbs.twimg.com/media/FoO7abc?format=png&name=4096x4096",
        "https://pbs.twimg.com/media/FoO7abc?format=png&name=large",
    ]
    assert (
        photo_candidates("https://pbs.twimg.com/media/FoO7abc?format=webp&name=small")[0]
        == "https://pbs.twimg.com/media/FoO7abc?format=webp&name=orig"
    )


def test_an_original_over_the_size_limit_falls_back_to_a_smaller_rendition(world, tmp_path):
    x, images, clock = world
    big_then_small = make_jpeg(300)
    key = x.photo(big_then_small)
    base = x.media[key]["url"].rsplit(".", 1)[0]
    x.files[f"{base}?format=jpg&name=orig"] = (200, "image/jpeg", b"\xff\xd8\xff" + bytes(300_000))
    x.tweet("202", "2008", [key])
    config = x_config(tmp_path, accounts=["bob"])
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        assert store.media_by_sha256(sha(big_then_small)) is not None
        assert [url for url in x.media_calls if base in url] == [
            f"{base}?format=jpg&name=orig",
            f"{base}?format=jpg&name=4096x4096",
        ]
        assert store.scalar("SELECT COUNT(*) FROM fetch_failures WHERE post_external_id = '2008'") == 0
        # Too big at every size: refused for good, each size tried once.
        x.tweet("202", "2009", [x.photo(b"\xff\xd8\xff" + bytes(300_000))])
        crawl_once(store, config, http=http_for(clock))
        row = store.query_one("SELECT reason, given_up FROM fetch_failures WHERE post_external_id = '2009'")
        assert row["given_up"] == 1 and row["reason"].count("over the limit") == 3


def test_a_video_over_the_byte_limit_falls_back_to_a_smaller_mp4_then_the_preview(world, tmp_path):
    x, images, clock = world
    small = panned_mp4(picture(21), size=(320, 180), frames=12)
    big = small + bytes(250_000)  # over the 200 kB limit of x_config
    x.tweet("101", "1011", [x.animated("video", {"1280x720": big, "640x360": big, "320x180": small}, make_jpeg(60))])
    x.tweet("101", "1012", [x.animated("video", {"1280x720": big, "640x360": big, "320x180": big}, make_jpeg(61))])
    config = x_config(tmp_path)
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        # 720p (the smallest >= 480 px) is too large, then 360p (the largest below 480), so 180p is taken.
        first = f"https://video.twimg.com/ext_tw_video/{x.next_key - 1}/pu/vid/"
        assert [url[len(first) :].split("/")[0] for url in x.media_calls if url.startswith(first)] == [
            "1280x720",
            "640x360",
            "320x180",
        ]
        stored = store.media_by_sha256(sha(small))
        assert stored is not None and stored["mime"] == "video/mp4" and stored["frames"] == 12
        # Every MP4 too large: the preview still is stored instead, and nothing is recorded as failed.
        assert store.media_by_sha256(sha(make_jpeg(61)))["mime"] == "image/jpeg"
        assert store.scalar("SELECT COUNT(*) FROM fetch_failures WHERE post_external_id IN ('1011', '1012')") == 0
        assert not any(".m3u8" in url for url in x.media_calls)


def test_video_variants_are_ordered_smallest_sufficient_first_and_hls_never():
    from bot.sources.x import media_ref

    item = {
        "type": "video",
        "preview_image_url": "https://pbs.twimg.com/ext_tw_video_thumb/1/pu/img/a.jpg",
        "width": 1280,
        "height": 720,
        "variants": [
            {"bit_rate": 832000, "content_type": "video/mp4", "url": "https://video.twimg.com/v/vid/640x360/b.mp4"},
            {"bit_rate": 256000, "content_type": "video/mp4", "url": "https://video.twimg.com/v/vid/320x180/c.mp4"},
            {
                "bit_rate": 2176000,
                "content_type": "video/mp4",
                "url": "https://video.twimg.com/v/vid/avc1/1280x720/d.mp4",
            },
            {
                "bit_rate": 5000000,
                "content_type": "video/mp4",
                "url": "https://video.twimg.com/v/vid/avc1/1920x1080/e.mp4",
            },
            {"content_type": "application/x-mpegURL", "url": "https://video.twimg.com/v/pl/f.m3u8"},
        ],
    }
    ref = media_ref(item)
    assert [ref.url, *ref.fallbacks] == [
        "https://video.twimg.com/v/vid/avc1/1280x720/d.mp4",
        "https://video.twimg.com/v/vid/avc1/1920x1080/e.mp4",
        "https://video.twimg.com/v/vid/640x360/b.mp4",
        "https://video.twimg.com/v/vid/320x180/c.mp4",
        "https://pbs.twimg.com/ext_tw_video_thumb/1/pu/img/a.jpg",
    ]
    # A vertical clip: 720x1280 is "at least 480 px on the short side" as well.
    item["variants"] = [{"content_type": "video/mp4", "url": "https://video.twimg.com/v/vid/720x1280/g.mp4"}]
    assert media_ref(item).url.endswith("g.mp4")


def test_an_hls_playlist_served_where_an_mp4_was_expected_is_refused_with_a_reason(world, tmp_path):
    from bot.ingest.fetch import DownloadRefused
    from bot.sources.records import MediaRef
    from bot.sources.x import XSource

    x, images, clock = world
    config = x_config(tmp_path)
    playlist_url = "https://video.twimg.com/ext_tw_video/9/pu/vid/1280x720/hls.mp4"
    x.files[playlist_url] = (200, "application/vnd.apple.mpegurl", HLS_PLAYLIST)
    source = XSource(config.sources.x, http_for(clock), config.ingest.max_bytes)
    with pytest.raises(DownloadRefused, match="HLS playlist"):
        source.fetch(MediaRef(url=playlist_url, kind="video"))
    # Served as video/mp4, the playlist passes the download and is refused by validation, with its reason.
    x.files[playlist_url] = (200, "video/mp4", HLS_PLAYLIST)
    x.tweet("101", "1011", [x.animated("animated_gif", b"", make_jpeg(62))])
    gif_url = x.media[f"16_{x.next_key}"]["variants"][0]["url"]
    x.files[gif_url] = (200, "video/mp4", HLS_PLAYLIST)
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        row = store.query_one("SELECT status, reject_reason FROM media WHERE source_url = ?", (gif_url,))
        assert row["status"] == "rejected" and "HLS playlist" in row["reject_reason"]
        assert store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'") == 6  # nothing else lost
