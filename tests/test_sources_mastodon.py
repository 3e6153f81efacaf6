"""Mastodon source and crawl against fake instances (payloads written from the Mastodon REST API docs)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlencode, urlsplit

import responses

from bot.ingest.crawl import crawl_once
from bot.sources.follows import follow, unfollow
from storage import Store
from tests.imagegen import picture
from tests.sources_support import FakeClock, crawl_config, http_for, make_jpeg, sha, world_fixture
from tests.videogen import panned_mp4

HOME = "mastodon.example"


@dataclass
class FakeMastodon:
    clock: FakeClock
    accounts: dict[tuple[str, str], dict] = field(default_factory=dict)  # (instance, username) -> account
    statuses: dict[str, list[dict]] = field(default_factory=dict)  # account id -> statuses, newest first
    following: dict[str, list[dict]] = field(default_factory=dict)  # account id -> accounts as the home sees them
    files: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    scripted: list[tuple[str, int, dict]] = field(default_factory=list)
    api_calls: list[tuple[str, dict, str | None]] = field(default_factory=list)  # (url path, params, auth)
    next_id: int = 1000

    def add_account(self, instance: str, username: str) -> dict:
        self.next_id += 1
        account = {
            "id": str(self.next_id),
            "username": username,
            "acct": username,
            "display_name": username.title(),
            "url": f"https://{instance}/@{username}",
        }
        self.accounts[(instance, username)] = account
        self.statuses[account["id"]] = []
        return account

    def attachment(
        self,
        kind: str,
        body: bytes | None,
        host: str,
        status: int = 200,
        alt: str = "",
        preview_body: bytes | None = None,
    ) -> dict:
        """An image, or a gifv/video whose `body` is its MP4 (the preview still is `preview_body`)."""
        self.next_id += 1
        name = f"{self.next_id:06d}"
        suffix = "jpg" if kind == "image" else "mp4"
        url = f"https://{host}/media_attachments/files/000/{name}/original/{name}.{suffix}"
        preview = f"https://{host}/media_attachments/files/000/{name}/small/{name}.jpg"
        self.files[url] = (status, body or b"")
        if preview_body is not None:
            self.files[preview] = (200, preview_body)
        meta = {"original": {"width": 320, "height": 240}, "small": {"width": 320, "height": 240}}
        if kind != "image":
            meta["original"].update(frame_rate="12/1", duration=2.0, bitrate=45000)
        return {
            "id": name,
            "type": kind,
            "url": url,
            "preview_url": preview,
            "remote_url": None,
            "description": alt or None,
            "blurhash": "UBL_:rOpGG-o",
            "meta": meta,
        }

    def status(self, instance: str, account: dict, attachments: list[dict], reblog: dict | None = None) -> dict:
        self.next_id += 1
        status_id = str(self.next_id)
        status = {
            "id": status_id,
            "created_at": datetime.fromtimestamp(self.clock.now + self.next_id, timezone.utc)
            .isoformat()
            .replace("+00:00", "Z"),
            "in_reply_to_id": None,
            "sensitive": False,
            "spoiler_text": "",
            "visibility": "public",
            "uri": f"https://{instance}/users/{account['username']}/statuses/{status_id}",
            "url": f"https://{instance}/@{account['username']}/{status_id}",
            "content": f"<p>post {status_id}</p>",
            "reblog": reblog,
            "account": account,
            "media_attachments": [] if reblog else attachments,
            "mentions": [],
            "tags": [],
            "emojis": [],
        }
        self.statuses[account["id"]].insert(0, status)
        return status

    def api(self, request):
        parts = urlsplit(request.url)
        params = {key: values[0] for key, values in parse_qs(parts.query).items()}
        self.api_calls.append((f"{parts.hostname}{parts.path}", params, request.headers.get("Authorization")))
        for index, (pattern, status, headers) in enumerate(self.scripted):
            if re.search(pattern, f"{parts.hostname}{parts.path}"):
                del self.scripted[index]
                return (
                    status,
                    {"content-type": "application/json", **headers},
                    json.dumps({"error": "Too many requests"}),
                )
        headers = {
            "content-type": "application/json",
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": "299",
            "X-RateLimit-Reset": "2027-01-15T08:05:00.000Z",
        }
        if parts.path == "/api/v1/accounts/lookup":
            account = self.accounts.get((parts.hostname, params["acct"]))
            if account is None:
                return 404, headers, json.dumps({"error": "Record not found"})
            return 200, headers, json.dumps(account)
        match = re.fullmatch(r"/api/v1/accounts/(\d+)/(statuses|following)", parts.path)
        if not match:
            return 404, headers, json.dumps({"error": "Record not found"})
        account_id, what = match.groups()
        if what == "following":
            items, key = self.following.get(account_id, []), None
        else:
            items = self.statuses[account_id]
            if params.get("exclude_reblogs") == "true":
                items = [s for s in items if s["reblog"] is None]
            assert params.get("only_media") == "true" and params.get("exclude_replies") == "true"
            key = int
            if "since_id" in params:
                items = [s for s in items if int(s["id"]) > int(params["since_id"])]
        start = int(params.get("max_id", 0)) if what == "following" else 0
        if what == "statuses" and "max_id" in params:
            items = [s for s in items if int(s["id"]) < int(params["max_id"])]
        limit = int(params.get("limit", 20))
        page = items[start : start + limit] if what == "following" else items[:limit]
        if page and len(items) > (start + limit if what == "following" else limit):
            cursor = str(start + limit) if key is None else page[-1]["id"]
            next_params = {k: v for k, v in params.items() if k not in ("max_id", "since_id")}
            # Mastodon's Link carries the filters and max_id, not since_id: the client must stop by itself.
            headers["Link"] = (
                f"<https://{parts.hostname}{parts.path}?{urlencode({**next_params, 'max_id': cursor})}>;"
                f' rel="next", <https://{parts.hostname}{parts.path}?min_id={page[0]["id"]}>; rel="prev"'
            )
        return 200, headers, json.dumps(page)

    def media_file(self, request):
        status, body = self.files.get(request.url, (404, b""))
        if status != 200:
            return status, {"content-type": "text/html"}, "<html>Not Found</html>"
        return 200, {"content-type": "video/mp4" if request.url.endswith(".mp4") else "image/jpeg"}, body

    def install(self, mock: responses.RequestsMock) -> None:
        for host in (HOME, "art.example"):
            mock.add_callback(
                responses.GET, re.compile(rf"https://{re.escape(host)}/api/.*"), callback=self.api, content_type=None
            )
        for host in (f"files.{HOME}", "art.example", "cdn.elsewhere.example"):
            mock.add_callback(
                responses.GET,
                re.compile(rf"https://{re.escape(host)}/media_attachments/.*"),
                callback=self.media_file,
                content_type=None,
            )


def build_world(clock: FakeClock) -> tuple[FakeMastodon, dict[str, bytes]]:
    fake = FakeMastodon(clock)
    images = {name: make_jpeg(seed) for seed, name in enumerate(["a1", "a2", "a3", "p1", "p2", "l1"], 60)}
    images["gif"] = panned_mp4(picture(31))
    images["video"] = panned_mp4(picture(32), frames=30)
    artist = fake.add_account(HOME, "artist")
    painter = fake.add_account("art.example", "painter")
    late = fake.add_account("art.example", "late")
    files = f"files.{HOME}"
    first = fake.status(HOME, artist, [fake.attachment("image", images["a1"], files, alt="a lighthouse")])
    fake.status(HOME, artist, [fake.attachment("gifv", images["gif"], files, preview_body=make_jpeg(5))])
    fake.status(HOME, artist, [fake.attachment("video", images["video"], files, preview_body=make_jpeg(6))])
    fake.status(HOME, artist, [fake.attachment("image", None, files, status=404)])
    fake.status(HOME, artist, [fake.attachment("image", images["a1"], "cdn.elsewhere.example")])
    fake.status(
        HOME, artist, [fake.attachment("image", images["a2"], files), fake.attachment("image", images["a3"], files)]
    )
    fake.status("art.example", painter, [fake.attachment("image", images["p1"], "art.example")])
    # painter boosts the lighthouse; art.example serves its cached copy (same bytes) from its own host.
    boosted = dict(first, media_attachments=[fake.attachment("image", images["a1"], "art.example")])
    fake.status("art.example", painter, [], reblog=boosted)
    fake.status("art.example", painter, [fake.attachment("image", images["p2"], "art.example")])
    fake.status("art.example", late, [fake.attachment("image", images["l1"], "art.example")])
    fake.following[artist["id"]] = [
        dict(painter, acct="painter@art.example", id="9001"),
        dict(late, acct="late@art.example", id="9002"),
    ]
    return fake, images


def mastodon_config(tmp_path, **settings):
    return crawl_config(
        tmp_path,
        {
            "mastodon": {
                "instance": HOME,
                "access_token": "home-token",
                "page_size": 2,
                "accounts": ["@artist@mastodon.example", "painter@art.example"],
                **settings,
            }
        },
    )


world = world_fixture(build_world)


def test_crawl_stores_images_links_boosts_and_keeps_the_token_home(world, tmp_path):
    fake, images, clock = world
    config = mastodon_config(tmp_path, include_reblogs=True)
    with Store.open(config.data_path) as store:
        follow(store, "mastodon", "@late@art.example")
        summary = crawl_once(store, config, http=http_for(clock))
        run = summary.runs[0]
        assert run.error is None and run.accounts == 3, run.problems
        stored = sorted(row["sha256"] for row in store.query("SELECT sha256 FROM media WHERE status = 'ok'"))
        assert stored == sorted(sha(images[name]) for name in ("a1", "gif", "video", "a2", "a3", "p1", "p2", "l1"))
        videos = store.query("SELECT frames, duration_s FROM media WHERE mime = 'video/mp4' ORDER BY id")
        assert [(row["frames"], row["duration_s"]) for row in videos] == [(24, 2.0), (30, 2.5)]
        lighthouse = store.scalar("SELECT id FROM media WHERE sha256 = ?", (sha(images["a1"]),))
        linked = store.query(
            "SELECT a.handle, pm.alt_text FROM post_media pm JOIN posts p ON p.id = pm.post_id "
            "JOIN accounts a ON a.id = p.account_id WHERE pm.media_id = ? ORDER BY a.handle",
            (lighthouse,),
        )
        assert [row["handle"] for row in linked] == ["artist@mastodon.example", "painter@art.example"]
        assert linked[0]["alt_text"] == "a lighthouse"
        failures = {row["reason"].split(" ")[0]: row["given_up"] for row in store.query("SELECT * FROM fetch_failures")}
        assert failures == {"HTTP": 0, "host": 1}  # the 404, and the host outside the allow-list
        auth = {(path.split("/")[0], token) for path, _params, token in fake.api_calls}
        assert auth == {(HOME, "Bearer home-token"), ("art.example", None)}
        statuses_calls = [params for path, params, _ in fake.api_calls if path.endswith("/statuses")]
        assert len(statuses_calls) >= 5 and all(p["exclude_reblogs"] == "false" for p in statuses_calls)


def test_second_run_sends_since_id_and_stores_nothing(world, tmp_path):
    fake, images, clock = world
    config = mastodon_config(tmp_path)
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        counts = store.scalar("SELECT COUNT(*) FROM media"), store.scalar("SELECT COUNT(*) FROM post_media")
        fake.api_calls.clear()
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.total("media_new") == 0
        assert (store.scalar("SELECT COUNT(*) FROM media"), store.scalar("SELECT COUNT(*) FROM post_media")) == counts
        since = {path: params.get("since_id") for path, params, _ in fake.api_calls if path.endswith("/statuses")}
        cursors = {row["external_id"]: row["cursor"] for row in store.query("SELECT external_id, cursor FROM accounts")}
        assert sorted(since.values()) == sorted(cursors.values()) and None not in since.values()
        assert not any(path.endswith("/lookup") for path, _, _ in fake.api_calls)


def test_429_with_a_far_reset_defers_and_unfollow_stops_crawling(world, tmp_path):
    fake, images, clock = world
    fake.scripted.append(
        (
            r"art\.example/api/v1/accounts/\d+/statuses",
            429,
            {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2027-01-15T09:00:00.000Z"},
        )
    )
    config = mastodon_config(tmp_path)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.deferred == 1 and clock.sleeps == []
        assert store.scalar("SELECT cursor FROM accounts WHERE handle = 'painter@art.example'") is None
        unfollow(store, "mastodon", "painter@art.example")
        fake.api_calls.clear()
        summary = crawl_once(store, config, http=http_for(clock))
        assert summary.accounts == 1 and not any("art.example" in path for path, _, _ in fake.api_calls)


def test_following_of_follows_link_pages(world, tmp_path, monkeypatch):
    fake, images, clock = world
    monkeypatch.setattr("bot.sources.mastodon.FOLLOWING_PAGE", 1)
    config = mastodon_config(tmp_path, accounts=[], following_of="artist")
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(clock))
        handles = sorted(row["handle"] for row in store.query("SELECT handle FROM accounts"))
        assert handles == ["late@art.example", "painter@art.example"] and summary.accounts == 2
        assert sum(1 for path, _, _ in fake.api_calls if path.endswith("/following")) == 2
        # Ids come from each account's own instance, not the home instance's view (9001, 9002).
        assert "9001" not in {row["external_id"] for row in store.query("SELECT external_id FROM accounts")}


def test_post_text_is_stored_as_plain_text(world, tmp_path):
    fake, images, clock = world
    artist = fake.accounts[(HOME, "artist")]
    status = fake.status(HOME, artist, [fake.attachment("image", make_jpeg(90), f"files.{HOME}")])
    status["content"] = (
        '<p>New piece! <a href="https://mastodon.example/tags/art" class="mention hashtag" rel="tag">#<span>art'
        '</span></a></p><p>ink &amp; paper<br />more &lt;3 <a href="https://shop.example/prints/fox-2026" '
        'rel="nofollow noopener" target="_blank"><span class="invisible">https://</span><span class="ellipsis">'
        'shop.example/prints/fo</span><span class="invisible">x-2026</span></a></p>'
    )
    config = mastodon_config(tmp_path, accounts=["artist"])
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(clock))
        text = store.scalar("SELECT text FROM posts WHERE external_id = ?", (status["uri"],))
    assert text == "New piece! #art\n\nink & paper\nmore <3 https://shop.example/prints/fox-2026"
