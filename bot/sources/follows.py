"""Follow and unfollow accounts by hand (CLI and chat), and list what each source crawls, as plain data.

A followed account (`accounts.followed = 1`, `followed_via = 'command'`) is crawled in addition to the config
lists; an unfollowed one (`followed = 0`) is skipped even when a config list or `following_of` names it. The
row stays either way, so posts and media already stored keep their account.
"""

from __future__ import annotations

from bot.config import Config
from bot.sources import NETWORK_NAMES, NETWORKS
from storage import Store, utc_now


class FollowError(ValueError):
    """An unknown source or a handle that cannot belong to it; the message says which and why."""


def canonical_handle(source: str, handle: str, mastodon_instance: str = "") -> str:
    """The handle as the store keeps it: lower case, no leading '@', user@instance on Mastodon."""
    if source not in NETWORKS:
        raise FollowError(f"unknown source {source!r}; expected one of {', '.join(NETWORK_NAMES)}")
    try:
        return NETWORKS[source].canonical_handle()(handle, mastodon_instance)
    except ValueError as error:
        raise FollowError(str(error)) from None


def _account_row(store: Store, source: str, name: str) -> dict | None:
    """The stored account `name` names: by its DID for a Bluesky DID (whatever its handle is now), else by handle."""
    if source == "bluesky" and name.startswith("did:"):
        return store.query_one(
            "SELECT id, followed, followed_via FROM accounts WHERE source = ? AND external_id = ?", (source, name)
        )
    return store.query_one(
        "SELECT id, followed, followed_via FROM accounts WHERE source = ? AND handle = ?", (source, name)
    )


def _upsert(store: Store, source: str, name: str) -> int:
    # A DID is its own account id: the crawl renames the row to the handle it resolves to.
    return store.upsert_account(source, name, name if source == "bluesky" and name.startswith("did:") else None)


def follow(store: Store, source: str, handle: str, mastodon_instance: str = "") -> dict:
    """Start crawling `handle` (on Bluesky also a DID); returns {source, handle, was_followed}."""
    name = canonical_handle(source, handle, mastodon_instance)
    with store.transaction():
        before = _account_row(store, source, name)
        account_id = _upsert(store, source, name)
        store.execute("UPDATE accounts SET followed = 1, followed_via = 'command' WHERE id = ?", (account_id,))
    was_followed = bool(before and before["followed"] and before["followed_via"])
    return {"source": source, "handle": name, "was_followed": was_followed}


def unfollow(store: Store, source: str, handle: str, mastodon_instance: str = "") -> dict:
    """Stop crawling `handle`, even if a config list names it; returns {source, handle, was_followed}."""
    name = canonical_handle(source, handle, mastodon_instance)
    with store.transaction():
        before = _account_row(store, source, name)
        account_id = _upsert(store, source, name)
        store.execute("UPDATE accounts SET followed = 0 WHERE id = ?", (account_id,))
    return {"source": source, "handle": name, "was_followed": bool(before and before["followed"])}


def list_sources(store: Store, config: Config | None = None) -> list[dict]:
    """Per source: enabled, configured accounts, accounts followed and unfollowed by hand, last crawl state."""
    config = config or Config()
    listing = [
        {
            "source": "folder",
            "enabled": config.sources.folder.enabled,
            "path": config.sources.folder.path,
            "accounts": store.scalar("SELECT COUNT(*) FROM accounts WHERE source = 'folder'"),
        }
    ]
    for source, network in NETWORKS.items():
        section = network.settings(config.sources)
        rows = store.query(
            "SELECT handle, followed, followed_via, cursor, last_crawl_at, last_error FROM accounts "
            "WHERE source = ? ORDER BY handle",
            (source,),
        )
        listing.append(
            {
                "source": source,
                "enabled": section.enabled,
                "configured_accounts": list(section.accounts),
                "following_of": section.following_of or None,
                "followed": [row["handle"] for row in rows if row["followed"] and row["followed_via"]],
                "unfollowed": [row["handle"] for row in rows if not row["followed"]],
                "accounts": [dict(row) for row in rows],
                "reads_today": store.scalar(
                    "SELECT reads FROM api_usage WHERE source = ? AND day = ?", (source, utc_now()[:10])
                )
                or 0,
            }
        )
    return listing
