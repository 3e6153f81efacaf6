"""Bluesky source: images posted by followed accounts, read from the public AppView without logging in.

`app.bsky.actor.getProfiles` resolves handles to DIDs, `app.bsky.graph.getFollows` lists `following_of`,
`app.bsky.feed.getAuthorFeed?filter=posts_with_media` pages newest first by cursor. The author feed has no
`since` parameter, so an account's cursor is the newest feed item's timestamp (`indexedAt`): a run reads
pages until it meets items no newer than that. Images come at full size from `app.bsky.embed.images#view`,
also inside quote posts (`app.bsky.embed.recordWithMedia#view`); videos contribute their thumbnail.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from bot.config import BlueskySourceConfig
from bot.ingest.fetch import Http, SourceError
from bot.sources.records import MediaRef, Post
from bot.sources.network import (Account, AccountBatch, ListedAccountsSource, Targets, account_batch, add_listed,
                                 normalise_handle)

SOURCE_NAME = "bluesky"
PROFILES_PER_CALL = 25  # app.bsky.actor.getProfiles accepts up to 25 actors
FOLLOWS_PAGE = 100
REPOST = "app.bsky.feed.defs#reasonRepost"
PIN = "app.bsky.feed.defs#reasonPin"


def bluesky_handle(handle: str) -> str:
    """A bare name means the default hosting provider: 'alice' -> 'alice.bsky.social'."""
    handle = normalise_handle(handle)
    return handle if "." in handle or handle.startswith("did:") else f"{handle}.bsky.social"


def embed_media(embed: Mapping | None) -> list[MediaRef]:
    """Images of a post's own embed; a quoted post's media belong to its author and are left out."""
    if not embed:
        return []
    kind = embed.get("$type")
    if kind == "app.bsky.embed.images#view":
        return [MediaRef(url=image["fullsize"], kind="photo", alt=image.get("alt") or None)
                for image in embed.get("images") or [] if image.get("fullsize")]
    if kind == "app.bsky.embed.recordWithMedia#view":
        return embed_media(embed.get("media"))
    if kind == "app.bsky.embed.video#view" and embed.get("thumbnail"):
        return [MediaRef(url=embed["thumbnail"], kind="video", alt=embed.get("alt") or None)]
    return []


def item_time(item: Mapping) -> str:
    """When the item entered the author's feed: the repost's time for reposts, else the post's."""
    reason = item.get("reason") or {}
    return reason.get("indexedAt") or item["post"].get("indexedAt") or ""


class BlueskySource(ListedAccountsSource):
    name = SOURCE_NAME
    settings: BlueskySourceConfig

    def __init__(self, settings: BlueskySourceConfig, http: Http, max_bytes: int,
                 meter: Callable[[], None] | None = None):
        super().__init__(settings, http, max_bytes, meter)
        self.appview = settings.appview.rstrip("/")

    def configured(self) -> str | None:
        return None  # the public AppView needs no login

    def _xrpc(self, method: str, params: dict, what: str) -> dict:
        return self.http.get_json(f"{self.appview}/xrpc/{method}", f"Bluesky {method} ({what})", "bluesky",
                                  params=params, meter=self.meter).body

    def lookup(self, handles: Sequence[str]) -> tuple[dict[str, Account], list[str]]:
        found: dict[str, Account] = {}
        for start in range(0, len(handles), PROFILES_PER_CALL):
            chunk = list(handles[start:start + PROFILES_PER_CALL])
            body = self._xrpc("app.bsky.actor.getProfiles", {"actors": chunk}, ", ".join(chunk))
            for profile in body.get("profiles") or []:
                handle = normalise_handle(profile["handle"])
                found[handle] = Account(handle, profile["did"], profile.get("displayName"))
        return found, [handle for handle in handles if handle not in found]

    def following(self, handle: str) -> list[Account]:
        accounts: list[Account] = []
        cursor = None
        while True:
            params = {"actor": handle, "limit": FOLLOWS_PAGE, **({"cursor": cursor} if cursor else {})}
            body = self._xrpc("app.bsky.graph.getFollows", params, handle)
            accounts += [Account(normalise_handle(actor["handle"]), actor["did"], actor.get("displayName"))
                         for actor in body.get("follows") or []]
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
        listed = [bluesky_handle(handle) for handle in (*self.settings.accounts, *followed)]
        missing = add_listed(by_handle, listed, known_ids, self.lookup)
        problems += [f"Bluesky account {handle} not found" for handle in missing]
        return Targets(tuple(by_handle.values()), tuple(problems))

    def account_posts(self, account: Account, cursor: str | None) -> AccountBatch:
        items: list[dict] = []
        page_cursor = None
        while True:
            params = {"actor": account.external_id or account.handle, "limit": self.settings.page_size,
                      "filter": "posts_with_media", **({"cursor": page_cursor} if page_cursor else {})}
            body = self._xrpc("app.bsky.feed.getAuthorFeed", params, account.handle)
            feed = [item for item in body.get("feed") or [] if (item.get("reason") or {}).get("$type") != PIN]
            # Strictly newer: the item at the cursor was read last run, and with backfill 0 deliberately not
            # stored. indexedAt (milliseconds) is set when the AppView indexes an item, before any read sees
            # it, so an item indexed later cannot carry the cursor's time.
            fresh = [item for item in feed if cursor is None or item_time(item) > cursor]
            items += fresh
            page_cursor = body.get("cursor")
            if (len(fresh) < len(feed) or not page_cursor or not feed
                    or (cursor is None and len(items) >= self.settings.backfill_posts)):
                break
        return account_batch(account, items, item_time, cursor is None, self.settings.backfill_posts,
                             lambda item: self._post(account, item))

    def _post(self, account: Account, item: Mapping) -> Post | None:
        post = item["post"]
        reason = item.get("reason") or {}
        is_repost = reason.get("$type") == REPOST
        if is_repost and not self.settings.include_reposts:
            return None
        media = embed_media(post.get("embed"))
        if not media:
            return None
        record = post.get("record") or {}
        author = post.get("author") or {}
        rkey = post["uri"].rsplit("/", 1)[-1]
        post_id = f"{post['uri']}#repost-by-{account.external_id}" if is_repost else post["uri"]
        return Post(source=SOURCE_NAME, account=account.handle, post_id=post_id,
                    url=f"https://bsky.app/profile/{author.get('handle') or author.get('did')}/post/{rkey}",
                    text=record.get("text"), created_at=record.get("createdAt"), media=tuple(media),
                    account_id=account.external_id, display_name=account.display_name)

    def fetch(self, ref: MediaRef) -> bytes:
        return self.http.download(ref.url, self.settings.media_hosts, self.max_bytes)


BLUESKY_HANDLE = re.compile(r"^([a-z0-9]([a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,}$|^did:[a-z]+:[a-z0-9._:%\-]+$")


def canonical_handle(handle: str, default_instance: str = "") -> str:
    """A Bluesky handle (a bare name means name.bsky.social) or a DID, as the store keeps it."""
    name = bluesky_handle(handle)
    if not BLUESKY_HANDLE.match(name):
        raise ValueError(f"Bluesky handle {handle!r} is not a domain name like artist.bsky.social")
    return name


SOURCE_CLASS = BlueskySource
