"""Follow and unfollow accounts by hand (CLI and chat), and list what each source crawls, as plain data.

A followed account (`accounts.followed = 1`, `followed_via = 'command'`) is crawled in addition to the config
lists; an unfollowed one (`followed = 0`) is skipped even when a config list or `following_of` names it. The
row stays either way, so posts and media already stored keep their account.
"""
from __future__ import annotations

import re

from bot.config import Config
from bot.sources.bluesky import bluesky_handle
from bot.sources.mastodon import MastodonHandleError, mastodon_handle
from bot.sources.network import normalise_handle
from storage import Store, utc_now

NETWORK_SOURCES = ("x", "bluesky", "mastodon")
X_HANDLE = re.compile(r"^[a-z0-9_]{1,15}$")
BLUESKY_HANDLE = re.compile(r"^([a-z0-9]([a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,}$|^did:[a-z]+:[a-z0-9._:%\-]+$")


class FollowError(ValueError):
    """An unknown source or a handle that cannot belong to it; the message says which and why."""


def canonical_handle(source: str, handle: str, mastodon_instance: str = "") -> str:
    """The handle as the store keeps it: lower case, no leading '@', user@instance on Mastodon."""
    if source not in NETWORK_SOURCES:
        raise FollowError(f"unknown source {source!r}; expected one of {', '.join(NETWORK_SOURCES)}")
    if source == "x":
        name = normalise_handle(handle)
        if not X_HANDLE.match(name):
            raise FollowError(f"X handle {handle!r} must be 1-15 letters, digits or underscores")
        return name
    if source == "bluesky":
        name = bluesky_handle(handle)
        if not BLUESKY_HANDLE.match(name):
            raise FollowError(f"Bluesky handle {handle!r} is not a domain name like artist.bsky.social")
        return name
    try:
        return mastodon_handle(handle, mastodon_instance)
    except MastodonHandleError as error:
        raise FollowError(str(error)) from None


def follow(store: Store, source: str, handle: str, mastodon_instance: str = "") -> dict:
    """Start crawling `handle`; returns {source, handle, was_followed}."""
    name = canonical_handle(source, handle, mastodon_instance)
    with store.transaction():
        before = store.query_one("SELECT followed, followed_via FROM accounts WHERE source = ? AND handle = ?",
                                 (source, name))
        account_id = store.upsert_account(source, name)
        store.execute("UPDATE accounts SET followed = 1, followed_via = 'command' WHERE id = ?", (account_id,))
    was_followed = bool(before and before["followed"] and before["followed_via"])
    return {"source": source, "handle": name, "was_followed": was_followed}


def unfollow(store: Store, source: str, handle: str, mastodon_instance: str = "") -> dict:
    """Stop crawling `handle`, even if a config list names it; returns {source, handle, was_followed}."""
    name = canonical_handle(source, handle, mastodon_instance)
    with store.transaction():
        before = store.query_one("SELECT followed FROM accounts WHERE source = ? AND handle = ?", (source, name))
        account_id = store.upsert_account(source, name)
        store.execute("UPDATE accounts SET followed = 0 WHERE id = ?", (account_id,))
    return {"source": source, "handle": name, "was_followed": bool(before and before["followed"])}


def list_sources(store: Store, config: Config | None = None) -> list[dict]:
    """Per source: enabled, configured accounts, accounts followed and unfollowed by hand, last crawl state."""
    config = config or Config()
    settings = {"x": config.sources.x, "bluesky": config.sources.bluesky, "mastodon": config.sources.mastodon}
    listing = [{"source": "folder", "enabled": config.sources.folder.enabled, "path": config.sources.folder.path,
                "accounts": store.scalar("SELECT COUNT(*) FROM accounts WHERE source = 'folder'")}]
    for source in NETWORK_SOURCES:
        section = settings[source]
        rows = store.query("SELECT handle, followed, followed_via, cursor, last_crawl_at, last_error FROM accounts "
                           "WHERE source = ? ORDER BY handle", (source,))
        listing.append({
            "source": source,
            "enabled": section.enabled,
            "configured_accounts": list(section.accounts),
            "following_of": section.following_of or None,
            "followed": [row["handle"] for row in rows if row["followed"] and row["followed_via"]],
            "unfollowed": [row["handle"] for row in rows if not row["followed"]],
            "accounts": [dict(row) for row in rows],
            "reads_today": store.scalar("SELECT reads FROM api_usage WHERE source = ? AND day = ?",
                                        (source, utc_now()[:10])) or 0,
        })
    return listing
