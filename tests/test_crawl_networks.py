"""X, Bluesky and Mastodon crawled together: an odd API answer (an HTML page, a JSON error object, records
missing fields) stops one account, never the crawl; backfill 0 starts every network from its newest post."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import pytest
import responses

from bot.ingest.crawl import crawl_once
from storage import Store
from tests.sources_support import FakeClock, crawl_config, http_for, make_jpeg
from tests.test_sources_bluesky import build_world as build_bluesky
from tests.test_sources_mastodon import HOME, build_world as build_mastodon
from tests.test_sources_x import build_world as build_x

HTML_PAGE = "<html><body>Down for maintenance</body></html>"


class OddAnswers:
    """Answers the first request whose URL contains a pattern with a scripted body, once; the rest go to the fake."""

    def __init__(self):
        self.pending: list[tuple[str, str, str]] = []  # (URL substring, content type, body)

    def wrap(self, serve):
        def callback(request):
            for index, (pattern, content_type, body) in enumerate(self.pending):
                if pattern in request.url:
                    del self.pending[index]
                    return 200, {"content-type": content_type}, body
            return serve(request)

        return callback


@dataclass
class Networks:
    x: object
    bluesky: object
    mastodon: object
    clock: FakeClock
    odd: OddAnswers


@pytest.fixture
def networks():
    clock = FakeClock()
    odd = OddAnswers()
    fakes = [build(clock)[0] for build in (build_x, build_bluesky, build_mastodon)]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for fake in fakes:
            fake.api = odd.wrap(fake.api)
            fake.install(mock)
        yield Networks(*fakes, clock, odd)


def all_networks_config(tmp_path, backfill: int = 100):
    return crawl_config(
        tmp_path,
        {
            "x": {
                "bearer_token": "test-bearer",
                "accounts": ["alice", "bob"],
                "page_size": 5,
                "backfill_tweets": backfill,
            },
            "bluesky": {"accounts": ["mika", "ren.example.com"], "page_size": 2, "backfill_posts": backfill},
            "mastodon": {
                "instance": HOME,
                "page_size": 2,
                "accounts": ["artist", "painter@art.example"],
                "backfill_posts": backfill,
            },
        },
        ingest={"max_bytes": 200_000},
    )


def stored(store: Store) -> tuple[set, set, dict]:
    posts = {(row["source"], row["external_id"]) for row in store.query("SELECT source, external_id FROM posts")}
    media = {row["sha256"] for row in store.query("SELECT sha256 FROM media")}
    cursors = {
        (row["source"], row["handle"]): row["cursor"]
        for row in store.query("SELECT source, handle, cursor FROM accounts")
    }
    return posts, media, cursors


def post_one_new_image_everywhere(nets: Networks) -> dict[str, str]:
    """One new image post for alice (X), mika (Bluesky) and artist (Mastodon); returns source -> account."""
    nets.x.tweet("101", "1011", [nets.x.photo(make_jpeg(501))])
    nets.bluesky.post(
        "mika.bsky.social", "new", nets.bluesky.images_embed(nets.bluesky.image("mika.bsky.social", make_jpeg(502)))
    )
    artist = nets.mastodon.accounts[(HOME, "artist")]
    nets.mastodon.status(HOME, artist, [nets.mastodon.attachment("image", make_jpeg(503), f"files.{HOME}")])
    return {"x": "alice", "bluesky": "mika.bsky.social", "mastodon": f"artist@{HOME}"}


def timeline_pattern(nets: Networks, source: str) -> str:
    if source == "x":
        return "/2/users/101/tweets"
    if source == "bluesky":
        did = nets.bluesky.profiles["mika.bsky.social"]["did"]
        return f"getAuthorFeed?actor={quote(did, safe='')}"
    return f"{HOME}/api/v1/accounts/{nets.mastodon.accounts[(HOME, 'artist')]['id']}/statuses"


ODD_TIMELINES = {
    # X: a 200 whose tweets lack their id field.
    "x": ("application/json", '{"data": [{"text": "no id here"}], "meta": {"result_count": 1}}', "KeyError: 'id'"),
    # Bluesky: a 200 HTML page from a proxy in front of the AppView.
    "bluesky": ("text/html", HTML_PAGE, "not JSON"),
    # Mastodon: a 200 JSON error object where the statuses list belongs.
    "mastodon": ("application/json", '{"error": "Record not found"}', "expected a JSON list"),
}


@pytest.mark.parametrize("odd_source", sorted(ODD_TIMELINES))
def test_an_odd_timeline_answer_defers_one_account_and_the_others_still_crawl(networks, tmp_path, odd_source):
    config = all_networks_config(tmp_path)
    with Store.open(config.data_path) as store:
        first = crawl_once(store, config, http=http_for(networks.clock))
        assert [run.error for run in first.runs] == [None, None, None]
        posts_before, media_before, cursors_before = stored(store)
        new_by = post_one_new_image_everywhere(networks)
        content_type, body, why = ODD_TIMELINES[odd_source]
        networks.odd.pending.append((timeline_pattern(networks, odd_source), content_type, body))

        summary = crawl_once(store, config, http=http_for(networks.clock))

        runs = {run.source: run for run in summary.runs}
        assert all(run.error is None for run in runs.values())
        odd_account = new_by[odd_source]
        problems = [problem for problem in runs[odd_source].problems if odd_account in problem]
        assert len(problems) == 1 and why in problems[0], runs[odd_source].problems
        # Everyone else's new post arrived; the odd account's waits, its cursor untouched.
        for source, run in runs.items():
            assert run.ingest.new_posts == (0 if source == odd_source else 1), (source, run.problems)
        posts_after, media_after, cursors_after = stored(store)
        assert posts_before < posts_after and media_before < media_after
        assert cursors_after[(odd_source, odd_account)] == cursors_before[(odd_source, odd_account)]
        assert store.scalar(
            "SELECT last_error FROM accounts WHERE source = ? AND handle = ?", (odd_source, odd_account)
        )

        # The API recovers: the deferred post is read on the next run.
        summary = crawl_once(store, config, http=http_for(networks.clock))
        assert {run.source: run.ingest.new_posts for run in summary.runs} == {
            "x": 0,
            "bluesky": 0,
            "mastodon": 0,
            odd_source: 1,
        }


def test_an_odd_account_lookup_stops_only_that_source(networks, tmp_path):
    # A profile without its handle field: Bluesky cannot resolve its accounts; X and Mastodon run on.
    networks.odd.pending.append(("getProfiles", "application/json", '{"profiles": [{"did": "did:plc:nohandle"}]}'))
    config = all_networks_config(tmp_path)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(networks.clock))
        runs = {run.source: run for run in summary.runs}
        assert "unexpected API answer" in runs["bluesky"].error and "'handle'" in runs["bluesky"].error
        assert runs["x"].error is None and runs["x"].ingest.new_posts > 0
        assert runs["mastodon"].error is None and runs["mastodon"].ingest.new_posts > 0


def test_backfill_zero_stores_nothing_old_but_sets_every_cursor(networks, tmp_path):
    config = all_networks_config(tmp_path, backfill=0)
    with Store.open(config.data_path) as store:
        summary = crawl_once(store, config, http=http_for(networks.clock))
        assert store.scalar("SELECT COUNT(*) FROM posts") == 0 and store.scalar("SELECT COUNT(*) FROM media") == 0
        assert {run.source: run.reads for run in summary.runs} == {"x": 3, "bluesky": 3, "mastodon": 4}  # + lookups
        newest_status = {
            account["username"]: networks.mastodon.statuses[account["id"]][0]["id"]
            for account in networks.mastodon.accounts.values()
        }
        assert stored(store)[2] == {
            ("x", "alice"): "1010",
            ("x", "bob"): "2007",
            ("bluesky", "mika.bsky.social"): "2026-11-20T10:00:04.000Z",
            ("bluesky", "ren.example.com"): "2026-11-20T10:00:09.000Z",
            ("mastodon", f"artist@{HOME}"): newest_status["artist"],
            ("mastodon", "painter@art.example"): newest_status["painter"],
        }
        post_one_new_image_everywhere(networks)
        summary = crawl_once(store, config, http=http_for(networks.clock))
        assert {run.source: run.ingest.new_posts for run in summary.runs} == {"x": 1, "bluesky": 1, "mastodon": 1}
        assert store.scalar("SELECT COUNT(*) FROM media") == 3
