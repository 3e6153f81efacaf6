"""Outbound HTTP for the network sources: retries with backoff, rate-limit waits, and bounded media downloads.

Every request of every source (tweepy's included) goes through one `requests.Session` owned by `Http`, so
timeouts, the User-Agent and test doubles (`responses`) apply everywhere. API calls go through
`Http.call`, which retries 5xx and connection errors with exponential backoff and jitter, waits out a 429
whose reset is near and raises `RateLimited` when it is not. `Http.get_json` also checks that the answer is
JSON of the expected shape, so an HTML page or an error object served with 200 is a `SourceError`. Media go
through `Http.download`, which also enforces a host allow-list (redirects included), a content type and a
byte limit while streaming.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urljoin, urlsplit

import requests

from bot.config import SourceHttpConfig
from bot.sources.base import FetchError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
# A wait shorter than this after a 429 with no usable reset header; servers that omit it expect a pause.
DEFAULT_RETRY_AFTER_S = 5.0
# Failures of the transport that a later attempt may not meet; other RequestExceptions (a malformed URL,
# too many redirects) would fail the same way again.
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
JSON_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}


class SourceError(Exception):
    """A network source cannot read what it was asked to; the message names the request and the reason."""


class RateLimited(SourceError):
    """The API refused with 429 and its reset is further away than we are willing to wait."""

    def __init__(self, message: str, reset_in_s: float | None):
        super().__init__(message)
        self.reset_in_s = reset_in_s


class ApiUnavailable(SourceError):
    """5xx or connection errors persisted through every retry."""


class AccessDenied(SourceError):
    """401/403: bad credentials, a missing access tier, or a protected/suspended account."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class BudgetExhausted(SourceError):
    """The configured daily read budget of a paid API is spent."""


class DownloadRefused(FetchError):
    """The media can never be fetched as it is (host not allowed, too big, not an image): no later retry."""


class TooLarge(DownloadRefused):
    """Over the byte limit: a smaller rendition of the same media, where the network offers one, may fit."""


MEDIA_TYPES = ("image/", "video/")
# What video hosts serve for a streamed video: a text playlist of segment URLs, not a file we can decode.
HLS_TYPES = ("application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl", "audio/x-mpegurl")


@dataclass(frozen=True)
class JsonReply:
    """A checked JSON answer and the response's parsed `Link` header (Mastodon pages by it)."""

    body: Any
    links: dict


def json_body(response: requests.Response, what: str, expect: type) -> Any:
    """The JSON of `response` if it is an `expect` (dict or list); otherwise a SourceError saying what came."""
    try:
        body = response.json()
    except ValueError:
        content_type = response.headers.get("content-type") or "no content type"
        raise SourceError(f"{what}: the answer is not JSON ({content_type}): {response.text[:200]!r}") from None
    if not isinstance(body, expect):
        expected = JSON_KINDS[expect].split(" ", 1)[1]
        raise SourceError(
            f"{what}: expected a JSON {expected}, got {JSON_KINDS.get(type(body), 'a number')}: {str(body)[:200]}"
        )
    return body


class _TimeoutSession(requests.Session):
    """A Session whose requests get a default timeout: tweepy sends none and would otherwise hang forever."""

    def __init__(self, timeout_s: float):
        super().__init__()
        self.default_timeout_s = timeout_s

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self.default_timeout_s)
        return super().request(method, url, **kwargs)


def _header(headers, *names: str) -> str | None:
    for name in names:
        value = headers.get(name)
        if value not in (None, ""):
            return value
    return None


def _seconds_until(value: str, now: float) -> float | None:
    """A reset header as seconds from `now`: epoch seconds, a delta in seconds, ISO 8601 or an HTTP date."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        # Epoch timestamps (X, Bluesky) are > 1e9; IETF RateLimit / Retry-After use a delta.
        return max(0.0, number - now) if number > 1e9 else max(0.0, number)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
    return max(0.0, moment - now)


def rate_limit_reset_in(headers, now: float) -> float | None:
    """Seconds until the rate limit resets, from whichever convention the server uses (None: not given).

    X: x-rate-limit-reset (epoch). Bluesky: ratelimit-reset (epoch). Mastodon: x-ratelimit-reset (ISO 8601).
    Retry-After (seconds or HTTP date) wins when present.
    """
    value = _header(headers, "retry-after", "x-rate-limit-reset", "ratelimit-reset", "x-ratelimit-reset")
    return None if value is None else _seconds_until(value, now)


def rate_limit_remaining(headers) -> int | None:
    value = _header(headers, "x-rate-limit-remaining", "ratelimit-remaining", "x-ratelimit-remaining")
    try:
        return None if value is None else int(float(value))
    except ValueError:
        return None


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """Exact host match over http(s); a listed '.example.org' also admits its subdomains."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    for allowed in allowed_hosts:
        allowed = allowed.lower()
        if host == allowed.lstrip(".") or (allowed.startswith(".") and host.endswith(allowed)):
            return True
    return False


class Http:
    """One session plus the retry and rate-limit policy; `sleep`, `clock` and `jitter` are injectable for tests."""

    def __init__(
        self,
        settings: SourceHttpConfig = SourceHttpConfig(),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ):
        self.settings = settings
        self.session = session or _TimeoutSession(settings.timeout_s)
        self.session.headers["User-Agent"] = settings.user_agent
        self.sleep = sleep
        self.clock = clock
        self.jitter = jitter
        # bucket -> epoch second before which the bucket has no requests left (from *-remaining: 0).
        self._exhausted_until: dict[str, float] = {}
        self.slept_s = 0.0

    def _pause(self, seconds: float, why: str) -> None:
        log.info("waiting %.1f s: %s", seconds, why)
        self.slept_s += seconds
        self.sleep(seconds)

    def _backoff(self, attempt: int, why: str) -> None:
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**attempt)
        # Full jitter: clients that failed together do not retry together.
        self._pause(ceiling * (0.5 + 0.5 * self.jitter()), f"retry {attempt + 1} after {why}")

    def _wait_or_defer(self, reset_in_s: float | None, what: str, why: str) -> None:
        if reset_in_s is None:
            reset_in_s = DEFAULT_RETRY_AFTER_S
        if reset_in_s > self.settings.max_rate_limit_wait_s:
            raise RateLimited(
                f"{what}: {why}; resets in {reset_in_s:.0f} s, more than the "
                f"{self.settings.max_rate_limit_wait_s:.0f} s we wait",
                reset_in_s,
            )
        self._pause(reset_in_s + 1, f"{what}: {why}")

    def call(
        self, send: Callable[[], requests.Response], what: str, bucket: str, meter: Callable[[], None] | None = None
    ) -> requests.Response:
        """Send until the answer is neither 429 nor 5xx; other statuses are returned for the caller to judge.

        `meter` runs before every request actually sent (a paid API's read budget), and may raise.
        """
        attempt = 0
        rate_limit_waits = 0
        while True:
            blocked_until = self._exhausted_until.get(bucket)
            if blocked_until is not None and blocked_until > self.clock():
                self._wait_or_defer(blocked_until - self.clock(), what, "no requests left in this window")
            self._exhausted_until.pop(bucket, None)
            if meter is not None:
                meter()
            try:
                response = send()
            except TRANSIENT_ERRORS as error:
                if attempt >= self.settings.max_retries:
                    raise ApiUnavailable(
                        f"{what}: {type(error).__name__} after {attempt + 1} attempts: {error}"
                    ) from None
                self._backoff(attempt, type(error).__name__)
                attempt += 1
                continue
            except requests.RequestException as error:
                raise SourceError(f"{what}: {type(error).__name__}: {error}") from None
            reset_in_s = rate_limit_reset_in(response.headers, self.clock())
            if rate_limit_remaining(response.headers) == 0 and reset_in_s is not None:
                self._exhausted_until[bucket] = self.clock() + reset_in_s
            if response.status_code == 429:
                response.close()
                self._exhausted_until.pop(bucket, None)
                rate_limit_waits += 1
                if rate_limit_waits > 3:
                    raise RateLimited(f"{what}: still 429 after waiting {rate_limit_waits - 1} times", reset_in_s)
                self._wait_or_defer(reset_in_s, what, "HTTP 429 Too Many Requests")
                continue
            if response.status_code >= 500:
                response.close()
                if attempt >= self.settings.max_retries:
                    raise ApiUnavailable(f"{what}: HTTP {response.status_code} after {attempt + 1} attempts")
                self._backoff(attempt, f"HTTP {response.status_code}")
                attempt += 1
                continue
            return response

    def get_json(
        self,
        url: str,
        what: str,
        bucket: str,
        expect: type = dict,
        params: dict | None = None,
        headers: dict | None = None,
        meter: Callable[[], None] | None = None,
    ) -> JsonReply:
        """GET an API URL through `call`, expecting a JSON `expect` (dict or list).

        401/403 become AccessDenied; other non-2xx, a body that is not JSON or JSON of another shape, a SourceError.
        """
        response = self.call(lambda: self.session.get(url, params=params, headers=headers), what, bucket, meter)
        if response.status_code in (401, 403):
            raise AccessDenied(f"{what}: HTTP {response.status_code}: {response.text[:300]}", response.status_code)
        if not 200 <= response.status_code < 300:
            raise SourceError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
        return JsonReply(json_body(response, what, expect), response.links)

    def download(
        self, url: str, allowed_hosts: Iterable[str], max_bytes: int, content_types: tuple[str, ...] = MEDIA_TYPES
    ) -> bytes:
        """The body of `url`, streamed under `max_bytes`; FetchError (DownloadRefused when permanent)."""
        allowed_hosts = tuple(allowed_hosts)
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            if not host_allowed(current, allowed_hosts):
                raise DownloadRefused(f"host of {current} is not in the allow-list ({', '.join(allowed_hosts)})")
            host = urlsplit(current).hostname or ""
            target = current
            try:
                response = self.call(
                    lambda target=target: self.session.get(target, stream=True, allow_redirects=False),
                    f"GET {target}",
                    host,
                )
            except SourceError as error:
                raise FetchError(str(error)) from None
            with response:
                if response.is_redirect and response.headers.get("location"):
                    current = urljoin(current, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise FetchError(f"HTTP {response.status_code} for {current}")
                content_type = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
                if content_type in HLS_TYPES:
                    raise DownloadRefused(f"{current} is an HLS playlist ({content_type}), not a video file")
                if not content_type.startswith(content_types):
                    raise DownloadRefused(
                        f"content type {content_type or 'missing'!r} of {current} is not an image or video"
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise TooLarge(f"{current} is {declared} bytes, over the limit of {max_bytes} bytes")
                return self._read_limited(response, current, max_bytes)
        raise FetchError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def download_first(self, urls: Sequence[str], allowed_hosts: Iterable[str], max_bytes: int) -> bytes:
        """The first of `urls` (renditions of one media, preferred first) that is not refused for good.

        A transient failure is raised at once: the crawl retries the media later, renditions and all, rather
        than settle for a lesser one. DownloadRefused when every rendition is refused.
        """
        refusals = []
        for url in urls:
            try:
                return self.download(url, allowed_hosts, max_bytes)
            except DownloadRefused as error:
                refusals.append(str(error))
        raise DownloadRefused("; ".join(refusals) or "no URL to download")

    @staticmethod
    def _read_limited(response: requests.Response, url: str, max_bytes: int) -> bytes:
        body = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                body += chunk
                # Checked while streaming: a missing or lying Content-Length cannot make us hold more.
                if len(body) > max_bytes:
                    raise TooLarge(f"{url} is over the limit of {max_bytes} bytes")
        except requests.RequestException as error:
            raise FetchError(f"download of {url} broke off: {type(error).__name__}: {error}") from None
        return bytes(body)
