"""X (Twitter) source: media posted by followed accounts, read with tweepy's API v2 client, newest since `since_id`.

Reads are paid, so every API request passes the crawl's daily budget (`meter`) and the shared retry and
rate-limit policy of bot/ingest/fetch.py. Photos are fetched at original size (`name=orig`, falling back to
`4096x4096` then `large`). Animated GIFs (which X serves as MP4) and videos are fetched as the smallest MP4
variant at least 480 px on its short side, the others after it when that one is refused (over the byte limit),
and the preview image last; the HLS variant is never taken.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

import requests
import tweepy

from bot.config import XSourceConfig
from bot.ingest.fetch import AccessDenied, BudgetExhausted, DownloadRefused, Http, SourceError, TooLarge, json_body
from bot.sources.records import MediaRef, Post
from bot.sources.base import FetchError
from bot.sources.network import (
    Account,
    AccountBatch,
    ListedAccountsSource,
    Targets,
    account_batch,
    add_listed,
    normalise_handle,
    numeric_id_key,
)

log = logging.getLogger(__name__)

SOURCE_NAME = "x"
MEDIA_HOSTS = ("pbs.twimg.com", "video.twimg.com")  # photos and previews; the MP4s of GIFs and videos
MEDIA_FIELDS = ["url", "type", "preview_image_url", "width", "height", "alt_text", "variants"]
TWEET_FIELDS = ["created_at", "attachments", "referenced_tweets", "author_id"]
PHOTO_SIZES = ("orig", "4096x4096", "large")  # tried in this order
MIN_VIDEO_SHORT_SIDE = 480  # the classifier looks at 224 px crops; a smaller clip is taken only if no larger fits
VARIANT_SIZE = re.compile(r"/(\d+)x(\d+)/")  # .../vid/avc1/1280x720/abc.mp4
USERS_PER_LOOKUP = 100  # GET /2/users/by accepts up to 100 usernames
FOLLOWING_PAGE = 1000  # GET /2/users/:id/following returns up to 1000 users per page
TIER_HINT = (
    "this endpoint is missing from some paid X API tiers (Basic/Pro) or needs user-context keys; "
    "the configured accounts are still crawled"
)


def photo_url(url: str, size: str) -> str:
    """`https://pbs.twimg.com/media/ID.jpg` (or `...ID?format=jpg&name=small`) at a named size."""
    parts = urlsplit(url)
    path = parts.path
    query = parse_qs(parts.query)
    stem, dot, ext = path.rpartition(".")
    if dot and "/" not in ext:
        path, image_format = stem, ext
    else:
        image_format = query.get("format", ["jpg"])[0]
    return f"{parts.scheme}://{parts.netloc}{path}?format={image_format}&name={size}"


def photo_candidates(url: str) -> list[str]:
    return [photo_url(url, size) for size in PHOTO_SIZES]


def video_variants(item: Mapping) -> list[str]:
    """The MP4 variants of a video or GIF in the order to try them: the smallest that is at least 480 px on the
    short side, larger ones after it, then the smaller ones, largest first. The HLS variant is left out."""
    sized = []
    for variant in item.get("variants") or []:
        if variant.get("content_type") != "video/mp4" or not variant.get("url"):
            continue
        found = VARIANT_SIZE.search(variant["url"])
        # A GIF's single variant names no size: the media's own size is its size.
        width, height = (int(found[1]), int(found[2])) if found else (item.get("width") or 0, item.get("height") or 0)
        sized.append((min(width, height), variant.get("bit_rate") or 0, variant["url"]))
    large_enough = sorted(entry for entry in sized if entry[0] >= MIN_VIDEO_SHORT_SIDE)
    smaller = sorted((entry for entry in sized if entry[0] < MIN_VIDEO_SHORT_SIDE), reverse=True)
    return [url for _side, _rate, url in large_enough + smaller]


def media_ref(item: Mapping) -> MediaRef | None:
    """A MediaRef for one `includes.media` object, or None when it carries no image or video URL."""
    kind = item.get("type")
    alt = item.get("alt_text") or None
    if kind == "photo" and item.get("url"):
        return MediaRef(url=photo_url(item["url"], PHOTO_SIZES[0]), kind="photo", alt=alt)
    if kind in ("animated_gif", "video"):
        renditions = video_variants(item) + ([item["preview_image_url"]] if item.get("preview_image_url") else [])
        if renditions:
            return MediaRef(url=renditions[0], kind=kind, alt=alt, fallbacks=tuple(renditions[1:]))
    return None


def _api_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body.get("errors") or body)[:300]
    return str(body)[:300]


class XSource(ListedAccountsSource):
    name = SOURCE_NAME
    settings: XSourceConfig

    def __init__(
        self,
        settings: XSourceConfig,
        http: Http,
        max_bytes: int,
        meter: Callable[[], None] | None = None,
        client: tweepy.Client | None = None,
    ):
        super().__init__(settings, http, max_bytes, meter)
        self.user_auth = not settings.bearer_token
        self.client = client or tweepy.Client(
            bearer_token=settings.bearer_token or None,
            consumer_key=settings.consumer_key or None,
            consumer_secret=settings.consumer_secret or None,
            access_token=settings.access_token or None,
            access_token_secret=settings.access_token_secret or None,
            return_type=requests.Response,
        )
        # tweepy builds its own Session; ours carries the timeout and User-Agent (and the tests' mocks).
        self.client.session = http.session

    def configured(self) -> str | None:
        user_keys = (
            self.settings.consumer_key,
            self.settings.consumer_secret,
            self.settings.access_token,
            self.settings.access_token_secret,
        )
        if self.settings.bearer_token or all(user_keys):
            return None
        return (
            "no X credentials: set ILLUSTFEED_X_BEARER_TOKEN (app bearer token), or all four of "
            "ILLUSTFEED_X_CONSUMER_KEY, ILLUSTFEED_X_CONSUMER_SECRET, ILLUSTFEED_X_ACCESS_TOKEN, "
            "ILLUSTFEED_X_ACCESS_TOKEN_SECRET"
        )

    # API --------------------------------------------------------------------------------------------

    def _get(self, what: str, bucket: str, method: Callable[..., requests.Response], **params) -> dict:
        def send() -> requests.Response:
            try:
                return method(user_auth=self.user_auth, **params)
            except tweepy.HTTPException as error:
                return error.response

        response = self.http.call(send, f"X API {what}", bucket, self.meter)
        status = response.status_code
        if status == 401:
            credential = (
                "the user-context keys (ILLUSTFEED_X_CONSUMER_KEY...)"
                if self.user_auth
                else "ILLUSTFEED_X_BEARER_TOKEN"
            )
            raise AccessDenied(
                f"X API {what}: 401 Unauthorized: the credentials were rejected; check {credential} "
                f"({_api_detail(response)})",
                401,
            )
        if status == 403:
            raise AccessDenied(f"X API {what}: 403 Forbidden: {_api_detail(response)}", 403)
        if not 200 <= status < 300:
            raise SourceError(f"X API {what}: HTTP {status}: {_api_detail(response)}")
        return json_body(response, f"X API {what}", dict)

    def lookup(self, handles: Sequence[str]) -> tuple[dict[str, Account], list[str]]:
        """Accounts by handle (one read per 100 handles) and the handles X does not know."""
        found: dict[str, Account] = {}
        for start in range(0, len(handles), USERS_PER_LOOKUP):
            chunk = list(handles[start : start + USERS_PER_LOOKUP])
            body = self._get(f"GET /2/users/by ({', '.join(chunk)})", "users", self.client.get_users, usernames=chunk)
            for user in body.get("data") or []:
                handle = normalise_handle(user["username"])
                found[handle] = Account(handle, str(user["id"]), user.get("name"))
        missing = [handle for handle in handles if handle not in found]
        return found, missing

    def following(self, handle: str, known_ids: Mapping[str, str]) -> list[Account]:
        user_id = known_ids.get(handle)
        if user_id is None:
            found, missing = self.lookup([handle])
            if missing:
                raise SourceError(f"X account @{handle} (following_of) not found")
            user_id = found[handle].external_id
        accounts: list[Account] = []
        token = None
        while True:
            params = {"max_results": FOLLOWING_PAGE}
            if token:
                params["pagination_token"] = token
            body = self._get(
                f"GET /2/users/{user_id}/following", "following", self.client.get_users_following, id=user_id, **params
            )
            accounts += [
                Account(normalise_handle(user["username"]), str(user["id"]), user.get("name"))
                for user in body.get("data") or []
            ]
            token = (body.get("meta") or {}).get("next_token")
            if not token:
                return accounts

    def targets(self, followed: Sequence[str], known_ids: Mapping[str, str]) -> Targets:
        problems: list[str] = []
        by_handle: dict[str, Account] = {}
        if self.settings.following_of:
            owner = normalise_handle(self.settings.following_of)
            try:
                for account in self.following(owner, known_ids):
                    by_handle.setdefault(account.handle, account)
            except AccessDenied as error:
                if error.status == 401:
                    raise
                problems.append(f"following list of @{owner} unavailable: {error}; {TIER_HINT}")
            except BudgetExhausted:
                raise
            except SourceError as error:
                problems.append(f"following list of @{owner} unavailable: {error}")
        listed = [normalise_handle(handle) for handle in (*self.settings.accounts, *followed)]
        missing = add_listed(by_handle, listed, known_ids, self.lookup)
        problems += [f"X account @{handle} not found (renamed, suspended or deleted?)" for handle in missing]
        return Targets(tuple(by_handle.values()), tuple(problems))

    def account_posts(self, account: Account, cursor: str | None) -> AccountBatch:
        """Tweets since `cursor` (all pages), or the newest `backfill_tweets` on the first run; oldest first."""
        exclude = ["replies"] if self.settings.include_retweets else ["replies", "retweets"]
        expansions = ["attachments.media_keys"]
        if self.settings.include_retweets:
            expansions += ["referenced_tweets.id", "referenced_tweets.id.attachments.media_keys"]
        params: dict = {
            "id": account.external_id,
            "max_results": min(100, max(5, self.settings.page_size)),
            "exclude": exclude,
            "expansions": expansions,
            "media_fields": MEDIA_FIELDS,
            "tweet_fields": TWEET_FIELDS,
        }
        if cursor:
            params["since_id"] = cursor
        tweets: list[dict] = []
        media_by_key: dict[str, dict] = {}
        referenced: dict[str, dict] = {}
        while True:
            body = self._get(
                f"GET /2/users/{account.external_id}/tweets (@{account.handle})",
                "tweets",
                self.client.get_users_tweets,
                **params,
            )
            page = body.get("data") or []
            includes = body.get("includes") or {}
            media_by_key.update(
                {item["media_key"]: item for item in includes.get("media") or [] if "media_key" in item}
            )
            referenced.update({tweet["id"]: tweet for tweet in includes.get("tweets") or [] if "id" in tweet})
            tweets += page
            token = (body.get("meta") or {}).get("next_token")
            if not token or not page or (cursor is None and len(tweets) >= self.settings.backfill_tweets):
                break
            params["pagination_token"] = token
        return account_batch(
            account,
            tweets,
            lambda tweet: str(tweet["id"]),
            cursor is None,
            self.settings.backfill_tweets,
            lambda tweet: self._post(account, tweet, media_by_key, referenced),
            numeric_id_key,
        )

    def _post(
        self, account: Account, tweet: dict, media_by_key: Mapping[str, dict], referenced: Mapping[str, dict]
    ) -> Post | None:
        retweeted_id = next(
            (ref["id"] for ref in tweet.get("referenced_tweets") or [] if ref.get("type") == "retweeted"), None
        )
        # A retweet's media belong to the original, which arrives under includes.tweets.
        carrier = referenced.get(retweeted_id, tweet) if retweeted_id else tweet
        keys = (
            (carrier.get("attachments") or {}).get("media_keys")
            or (tweet.get("attachments") or {}).get("media_keys")
            or []
        )
        media = []
        for key in keys:
            item = media_by_key.get(key)
            if item is None:
                log.warning("X tweet %s: media key %s has no entry in includes.media; skipped", tweet["id"], key)
                continue
            ref = media_ref(item)
            if ref is not None:
                media.append(ref)
        if not media:
            return None
        return Post(
            source=SOURCE_NAME,
            account=account.handle,
            post_id=str(tweet["id"]),
            url=f"https://x.com/{account.handle}/status/{tweet['id']}",
            text=tweet.get("text"),
            created_at=tweet.get("created_at"),
            media=tuple(media),
            account_id=account.external_id,
            display_name=account.display_name,
        )

    # Media ------------------------------------------------------------------------------------------

    def fetch(self, ref: MediaRef) -> bytes:
        """The largest rendition that can be fetched under the byte limit; DownloadRefused if none ever can."""
        if ref.kind != "photo":
            return self.http.download_first([ref.url, *ref.fallbacks], MEDIA_HOSTS, self.max_bytes)
        candidates = photo_candidates(ref.url)
        errors = []
        every_size_too_large = True
        for url in candidates:
            try:
                return self.http.download(url, MEDIA_HOSTS, self.max_bytes)
            except TooLarge as error:
                errors.append(str(error))
            except DownloadRefused:
                raise
            except FetchError as error:
                errors.append(str(error))
                every_size_too_large = False
        if every_size_too_large:
            raise DownloadRefused("; ".join(errors))
        raise FetchError("; ".join(errors))


X_HANDLE = re.compile(r"^[a-z0-9_]{1,15}$")


def canonical_handle(handle: str, default_instance: str = "") -> str:
    """An X handle as the store keeps it: lower case, no '@'; 1-15 letters, digits or underscores."""
    name = normalise_handle(handle)
    if not X_HANDLE.match(name):
        raise ValueError(f"X handle {handle!r} must be 1-15 letters, digits or underscores")
    return name


SOURCE_CLASS = XSource
