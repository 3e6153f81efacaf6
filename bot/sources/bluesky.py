"""Bluesky source: images posted by followed accounts, read from the public AppView without logging in.

`app.bsky.actor.getProfiles` resolves handles and DIDs to profiles on every run: an account is its DID, so
one listed by DID is crawled, and one whose handle changed is renamed in the store (its row, cursor and posts
stay) and crawled on. `app.bsky.graph.getFollows` lists `following_of`,
`app.bsky.feed.getAuthorFeed?filter=posts_with_media` pages newest first by cursor. The author feed has no
`since` parameter, so an account's cursor is the newest feed item's timestamp (`indexedAt`): a run reads
pages until it meets items no newer than that. Images come at full size from `app.bsky.embed.images#view`,
also inside quote posts (`app.bsky.embed.recordWithMedia#view`). A video's view offers only an HLS playlist
and a thumbnail, so its progressive file is the blob the author uploaded, read from their PDS
(`com.atproto.sync.getBlob`, the PDS named in the DID document from plc.directory or did:web); the thumbnail
is taken when that file is refused (over the byte limit) or the PDS cannot be found.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Mapping, Sequence
from urllib.parse import quote, urlsplit

from bot.config import BlueskySourceConfig
from bot.ingest.fetch import Http, SourceError
from bot.sources.records import MediaRef, Post
from bot.sources.network import Account, AccountBatch, ListedAccountsSource, Targets, account_batch, normalise_handle

log = logging.getLogger(__name__)

SOURCE_NAME = "bluesky"
PROFILES_PER_CALL = 25  # app.bsky.actor.getProfiles accepts up to 25 actors
FOLLOWS_PAGE = 100
REPOST = "app.bsky.feed.defs#reasonRepost"
INVALID_HANDLE = "handle.invalid"
PIN = "app.bsky.feed.defs#reasonPin"


def bluesky_handle(handle: str) -> str:
    """A bare name means the default hosting provider: 'alice' -> 'alice.bsky.social'."""
    handle = normalise_handle(handle)
    return handle if "." in handle or handle.startswith("did:") else f"{handle}.bsky.social"


def embed_media(embed: Mapping | None, video_file: Callable[[str], str | None] = lambda cid: None) -> list[MediaRef]:
    """Images and videos of a post's own embed; a quoted post's media belong to its author and are left out.

    `video_file(cid)` is the URL of a video's uploaded file, if it can be had; its thumbnail comes after it.
    """
    if not embed:
        return []
    kind = embed.get("$type")
    if kind == "app.bsky.embed.images#view":
        return [
            MediaRef(url=image["fullsize"], kind="photo", alt=image.get("alt") or None)
            for image in embed.get("images") or []
            if image.get("fullsize")
        ]
    if kind == "app.bsky.embed.recordWithMedia#view":
        return embed_media(embed.get("media"), video_file)
    if kind == "app.bsky.embed.video#view":
        renditions = [
            url for url in (video_file(embed["cid"]) if embed.get("cid") else None, embed.get("thumbnail")) if url
        ]
        if renditions:
            return [
                MediaRef(url=renditions[0], kind="video", alt=embed.get("alt") or None, fallbacks=tuple(renditions[1:]))
            ]
    return []


def pds_endpoint(did_document: Mapping) -> str | None:
    """The https URL of the account's PDS, as its DID document names it (service `#atproto_pds`)."""
    for service in did_document.get("service") or []:
        if not isinstance(service, Mapping):
            continue
        endpoint = service.get("serviceEndpoint")
        if (
            str(service.get("id", "")).endswith("#atproto_pds")
            and isinstance(endpoint, str)
            and urlsplit(endpoint).scheme == "https"
            and urlsplit(endpoint).hostname
        ):
            return endpoint.rstrip("/")
    return None


def item_time(item: Mapping) -> str:
    """When the item entered the author's feed: the repost's time for reposts, else the post's."""
    reason = item.get("reason") or {}
    return reason.get("indexedAt") or item["post"].get("indexedAt") or ""


class BlueskySource(ListedAccountsSource):
    name = SOURCE_NAME
    settings: BlueskySourceConfig

    def __init__(
        self, settings: BlueskySourceConfig, http: Http, max_bytes: int, meter: Callable[[], None] | None = None
    ):
        super().__init__(settings, http, max_bytes, meter)
        self.appview = settings.appview.rstrip("/")
        self.pds_by_did: dict[str, str | None] = {}

    def configured(self) -> str | None:
        return None  # the public AppView needs no login

    def _xrpc(self, method: str, params: dict, what: str) -> dict:
        return self.http.get_json(
            f"{self.appview}/xrpc/{method}", f"Bluesky {method} ({what})", "bluesky", params=params, meter=self.meter
        ).body

    def lookup(self, actors: Sequence[str]) -> tuple[dict[str, Account], list[str]]:
        """Accounts by the handle or DID asked for (a DID's answer names its current handle), and the unknown."""
        found: dict[str, Account] = {}
        for start in range(0, len(actors), PROFILES_PER_CALL):
            chunk = list(actors[start : start + PROFILES_PER_CALL])
            body = self._xrpc("app.bsky.actor.getProfiles", {"actors": chunk}, ", ".join(chunk))
            for profile in body.get("profiles") or []:
                did = profile["did"]
                handle = normalise_handle(profile["handle"])
                # A handle whose DNS or well-known record no longer points at the DID is reported as invalid.
                account = Account(did if handle == INVALID_HANDLE else handle, did, profile.get("displayName"))
                for asked in (did, handle):
                    if asked in chunk:
                        found[asked] = account
        return found, [actor for actor in actors if actor not in found]

    def pds_of(self, did: str) -> str | None:
        """The account's PDS URL from its DID document (cached per run); None when it cannot be found."""
        if did not in self.pds_by_did:
            if did.startswith("did:plc:"):
                url = f"{self.settings.plc_directory.rstrip('/')}/{did}"
            elif did.startswith("did:web:"):
                url = f"https://{did.removeprefix('did:web:')}/.well-known/did.json"
            else:
                self.pds_by_did[did] = None
                return None
            try:
                document = self.http.get_json(
                    url, f"DID document of {did}", urlsplit(url).hostname or "", meter=self.meter
                ).body
                self.pds_by_did[did] = pds_endpoint(document)
            except SourceError as error:
                log.warning("Bluesky videos of %s: their thumbnail only: %s", did, error)
                self.pds_by_did[did] = None
        return self.pds_by_did[did]

    def video_file_of(self, did: str) -> Callable[[str], str | None]:
        def url(cid: str) -> str | None:
            if not self.settings.video_files:
                return None
            pds = self.pds_of(did)
            return (
                None
                if pds is None
                else f"{pds}/xrpc/com.atproto.sync.getBlob?did={quote(did, safe='')}&cid={quote(cid, safe='')}"
            )

        return url

    def media_hosts(self) -> list[str]:
        """The configured CDN hosts and the PDS hosts of this run's video authors."""
        pds_hosts = sorted({urlsplit(pds).hostname for pds in self.pds_by_did.values() if pds})
        return [*self.settings.media_hosts, *pds_hosts]

    def following(self, handle: str) -> list[Account]:
        accounts: list[Account] = []
        cursor = None
        while True:
            params = {"actor": handle, "limit": FOLLOWS_PAGE, **({"cursor": cursor} if cursor else {})}
            body = self._xrpc("app.bsky.graph.getFollows", params, handle)
            accounts += [
                Account(normalise_handle(actor["handle"]), actor["did"], actor.get("displayName"))
                for actor in body.get("follows") or []
            ]
            cursor = body.get("cursor")
            if not cursor or not body.get("follows"):
                return accounts

    def targets(self, followed: Sequence[str], known_ids: Mapping[str, str]) -> Targets:
        problems: list[str] = []
        by_handle: dict[str, Account] = {}
        if self.settings.following_of:
            owner = bluesky_handle(self.settings.following_of)
            try:
                for account in self.following(owner):
                    by_handle.setdefault(account.handle, account)
            except SourceError as error:
                problems.append(f"follows of {owner} unavailable: {error}")
        # Every listed account is asked for by its DID when one is stored, so a changed handle is followed.
        actors = {
            name: known_ids.get(name, name)
            for name in dict.fromkeys(bluesky_handle(handle) for handle in (*self.settings.accounts, *followed))
            if name
        }
        found, _missing = self.lookup(list(dict.fromkeys(actors.values()))) if actors else ({}, [])
        by_did = {account.external_id: account for account in by_handle.values()}
        for name, actor in actors.items():
            account = found.get(actor)
            if account is None:
                problems.append(f"Bluesky account {name} not found")
            else:
                by_did.setdefault(account.external_id, account)
        return Targets(tuple(by_did.values()), tuple(problems))

    def account_posts(self, account: Account, cursor: str | None) -> AccountBatch:
        items: list[dict] = []
        page_cursor = None
        while True:
            params = {
                "actor": account.external_id or account.handle,
                "limit": self.settings.page_size,
                "filter": "posts_with_media",
                **({"cursor": page_cursor} if page_cursor else {}),
            }
            body = self._xrpc("app.bsky.feed.getAuthorFeed", params, account.handle)
            feed = [item for item in body.get("feed") or [] if (item.get("reason") or {}).get("$type") != PIN]
            # Strictly newer: the item at the cursor was read last run, and with backfill 0 deliberately not
            # stored. indexedAt (milliseconds) is set when the AppView indexes an item, before any read sees
            # it, so an item indexed later cannot carry the cursor's time.
            fresh = [item for item in feed if cursor is None or item_time(item) > cursor]
            items += fresh
            page_cursor = body.get("cursor")
            if (
                len(fresh) < len(feed)
                or not page_cursor
                or not feed
                or (cursor is None and len(items) >= self.settings.backfill_posts)
            ):
                break
        return account_batch(
            account,
            items,
            item_time,
            cursor is None,
            self.settings.backfill_posts,
            lambda item: self._post(account, item),
        )

    def _post(self, account: Account, item: Mapping) -> Post | None:
        post = item["post"]
        reason = item.get("reason") or {}
        is_repost = reason.get("$type") == REPOST
        if is_repost and not self.settings.include_reposts:
            return None
        record = post.get("record") or {}
        author = post.get("author") or {}
        author_did = author.get("did") or post["uri"].removeprefix("at://").split("/", 1)[0]
        media = embed_media(post.get("embed"), self.video_file_of(author_did))
        if not media:
            return None
        rkey = post["uri"].rsplit("/", 1)[-1]
        post_id = f"{post['uri']}#repost-by-{account.external_id}" if is_repost else post["uri"]
        return Post(
            source=SOURCE_NAME,
            account=account.handle,
            post_id=post_id,
            url=f"https://bsky.app/profile/{author.get('handle') or author.get('did')}/post/{rkey}",
            text=record.get("text"),
            created_at=record.get("createdAt"),
            media=tuple(media),
            account_id=account.external_id,
            display_name=account.display_name,
        )

    def fetch(self, ref: MediaRef) -> bytes:
        return self.http.download_first([ref.url, *ref.fallbacks], self.media_hosts(), self.max_bytes)


BLUESKY_HANDLE = re.compile(r"^([a-z0-9]([a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,}$|^did:[a-z]+:[a-z0-9._:%\-]+$")


def canonical_handle(handle: str, default_instance: str = "") -> str:
    """A Bluesky handle (a bare name means name.bsky.social) or a DID, as the store keeps it."""
    name = bluesky_handle(handle)
    if not BLUESKY_HANDLE.match(name):
        raise ValueError(
            f"Bluesky handle {handle!r} is not a domain name like artist.bsky.social or a DID like did:plc:..."
        )
    return name


SOURCE_CLASS = BlueskySource
