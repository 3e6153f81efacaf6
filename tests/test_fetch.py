"""bot/ingest/fetch.py: bounded downloads, host allow-list (redirects included), retries and rate-limit headers."""

from __future__ import annotations

import pytest
import requests
import responses

from bot.config import SourceHttpConfig
from bot.ingest.fetch import (
    ApiUnavailable,
    DownloadRefused,
    Http,
    RateLimited,
    SourceError,
    host_allowed,
    rate_limit_reset_in,
)
from bot.sources.base import FetchError
from tests.sources_support import FakeClock, make_jpeg

HOSTS = ("cdn.example.org",)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def http(clock):
    return Http(
        SourceHttpConfig(max_retries=2, backoff_base_s=1.0, max_rate_limit_wait_s=30.0),
        sleep=clock.sleep,
        clock=clock.time,
        jitter=lambda: 1.0,
    )


@responses.activate
def test_download_returns_the_image(http):
    body = make_jpeg(1)
    responses.get("https://cdn.example.org/a.jpg", body=body, content_type="image/jpeg")
    assert http.download("https://cdn.example.org/a.jpg", HOSTS, max_bytes=10_000) == body


@responses.activate
def test_redirect_to_a_foreign_host_is_refused(http):
    responses.get("https://cdn.example.org/a.jpg", status=302, headers={"location": "https://evil.test/a.jpg"})
    with pytest.raises(DownloadRefused, match="evil.test.*allow-list"):
        http.download("https://cdn.example.org/a.jpg", HOSTS, max_bytes=10_000)
    assert len(responses.calls) == 1  # the foreign host is never contacted


@responses.activate
def test_redirect_within_the_allow_list_is_followed(http):
    body = make_jpeg(2)
    responses.get("https://cdn.example.org/a.jpg", status=301, headers={"location": "/b.jpg"})
    responses.get("https://cdn.example.org/b.jpg", body=body, content_type="image/png")
    assert http.download("https://cdn.example.org/a.jpg", HOSTS, max_bytes=10_000) == body


@responses.activate
def test_body_over_the_limit_is_refused_while_streaming(http):
    responses.get(
        "https://cdn.example.org/big.jpg",
        body=b"\xff" * 50_000,
        content_type="image/jpeg",
        auto_calculate_content_length=False,
    )
    with pytest.raises(DownloadRefused, match="over the limit of 10000 bytes"):
        http.download("https://cdn.example.org/big.jpg", HOSTS, max_bytes=10_000)


@responses.activate
def test_declared_length_over_the_limit_is_refused(http):
    responses.get(
        "https://cdn.example.org/big.jpg",
        body=b"\xff" * 50_000,
        content_type="image/jpeg",
        auto_calculate_content_length=True,
    )
    with pytest.raises(DownloadRefused, match="50000 bytes"):
        http.download("https://cdn.example.org/big.jpg", HOSTS, max_bytes=10_000)


@responses.activate
def test_html_content_type_is_refused(http):
    responses.get("https://cdn.example.org/a.jpg", body="<html>login</html>", content_type="text/html")
    with pytest.raises(DownloadRefused, match="'text/html'.*not an image"):
        http.download("https://cdn.example.org/a.jpg", HOSTS, max_bytes=10_000)


@responses.activate
def test_404_is_a_retryable_fetch_error(http):
    responses.get("https://cdn.example.org/gone.jpg", status=404)
    with pytest.raises(FetchError, match="HTTP 404") as raised:
        http.download("https://cdn.example.org/gone.jpg", HOSTS, max_bytes=10_000)
    assert not isinstance(raised.value, DownloadRefused)


@responses.activate
def test_connection_errors_are_retried_with_backoff(http, clock):
    url = "https://api.example.org/x"
    responses.get(url, body=requests.ConnectionError("reset by peer"))
    responses.get(url, body=requests.ConnectionError("reset by peer"))
    responses.get(url, json={"ok": True})
    response = http.call(lambda: http.session.get(url), "GET x", "api")
    assert response.json() == {"ok": True}
    assert clock.sleeps == [1.0, 2.0]  # exponential: base * 2**attempt (jitter pinned to 1)


@responses.activate
def test_persistent_5xx_gives_up_after_the_retries(http, clock):
    url = "https://api.example.org/x"
    responses.get(url, status=502)
    with pytest.raises(ApiUnavailable, match="HTTP 502 after 3 attempts"):
        http.call(lambda: http.session.get(url), "GET x", "api")
    assert len(responses.calls) == 3


@responses.activate
def test_remaining_zero_waits_before_the_next_request(http, clock):
    url = "https://api.example.org/x"
    responses.get(url, json={}, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "2027-01-15T08:00:10.000Z"})
    clock.now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    http.call(lambda: http.session.get(url), "GET x", "api")
    http.call(lambda: http.session.get(url), "GET x", "api")
    assert clock.sleeps == [11.0]


@responses.activate
def test_429_far_from_reset_raises_rate_limited(http, clock):
    url = "https://api.example.org/x"
    responses.get(url, status=429, headers={"ratelimit-reset": str(int(clock.now) + 3600)})
    with pytest.raises(RateLimited) as raised:
        http.call(lambda: http.session.get(url), "GET x", "api")
    assert raised.value.reset_in_s == pytest.approx(3600, abs=1) and clock.sleeps == []


def test_reset_header_conventions():
    now = 1_800_000_000.0
    assert rate_limit_reset_in({"x-rate-limit-reset": str(int(now) + 42)}, now) == 42
    assert rate_limit_reset_in({"ratelimit-reset": "7"}, now) == 7  # IETF draft: a delta
    assert rate_limit_reset_in({"x-ratelimit-reset": "2027-01-15T08:05:00.000Z"}, now) == 300
    assert rate_limit_reset_in({"retry-after": "Fri, 15 Jan 2027 08:01:00 GMT"}, now) == 60
    assert rate_limit_reset_in({}, now) is None


def test_host_allow_list():
    assert host_allowed("https://pbs.twimg.com/media/a.jpg", ["pbs.twimg.com"])
    assert not host_allowed("https://pbs.twimg.com.evil.test/a.jpg", ["pbs.twimg.com"])
    assert not host_allowed("file:///etc/passwd", ["pbs.twimg.com"])
    assert host_allowed("https://files.mastodon.social/a.png", [".mastodon.social"])
    assert not host_allowed("https://mastodon.social.evil.test/a.png", [".mastodon.social"])


@responses.activate
def test_a_200_html_page_from_an_api_is_a_source_error_naming_the_request(http):
    responses.get(
        "https://api.example.org/feed", body="<html><body>Down for maintenance</body></html>", content_type="text/html"
    )
    with pytest.raises(SourceError, match=r"GET feed: the answer is not JSON \(text/html\).*maintenance"):
        http.get_json("https://api.example.org/feed", "GET feed", "api")


@responses.activate
def test_json_of_the_wrong_shape_is_a_source_error(http):
    responses.get("https://api.example.org/statuses", json={"error": "Record not found"})
    with pytest.raises(SourceError, match=r"GET statuses: expected a JSON list, got an object: .*Record not found"):
        http.get_json("https://api.example.org/statuses", "GET statuses", "api", expect=list)
    responses.get("https://api.example.org/profile", json=["not", "an", "object"])
    with pytest.raises(SourceError, match=r"GET profile: expected a JSON object, got a list"):
        http.get_json("https://api.example.org/profile", "GET profile", "api")
    responses.get(
        "https://api.example.org/more",
        json=[{"id": "1"}],
        headers={"Link": '<https://api.example.org/more?max_id=1>; rel="next"'},
    )
    reply = http.get_json("https://api.example.org/more", "GET more", "api", expect=list)
    assert reply.body == [{"id": "1"}] and reply.links["next"]["url"] == "https://api.example.org/more?max_id=1"


@responses.activate
def test_a_broken_off_answer_is_retried_and_a_bad_url_is_not(http, clock):
    responses.get("https://api.example.org/feed", body=requests.exceptions.ChunkedEncodingError("connection reset"))
    responses.get("https://api.example.org/feed", json={"feed": []})
    assert http.get_json("https://api.example.org/feed", "GET feed", "api").body == {"feed": []}
    assert len(clock.sleeps) == 1
    with pytest.raises(SourceError, match=r"GET odd: InvalidURL"):
        http.get_json("https://[not-a-host/x", "GET odd", "api")
    assert len(clock.sleeps) == 1  # a malformed URL cannot get better by waiting
