"""What a social-network source offers the crawl: its accounts, one account's new posts with a cursor, media bytes.

A network source never touches the store. The crawl (bot/ingest/crawl.py) hands it the cursor and the account ids
it knows, ingests the posts it returns, and only then saves the returned cursor, so a crash re-reads rather
than skips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence, TypeVar

from bot.sources.records import MediaRef, Post

if TYPE_CHECKING:
    from bot.ingest.fetch import Http

Item = TypeVar("Item")  # one post as a network's API returns it


def normalise_handle(handle: str) -> str:
    """Handles are case-insensitive on every network we read; a leading '@' is decoration."""
    return handle.strip().lstrip("@").lower()


def numeric_id_key(post_id: str) -> tuple[int, str]:
    """Post ids of X and Mastodon are numeric strings of varying length; this orders them as numbers."""
    return (len(post_id), post_id)


@dataclass(frozen=True)
class Account:
    handle: str
    external_id: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class AccountBatch:
    """New posts of one account, oldest first, and the cursor to store once they are all ingested."""

    account: Account
    posts: tuple[Post, ...]
    cursor: str | None  # None: keep the stored cursor
    skipped_without_media: int = 0


@dataclass(frozen=True)
class Targets:
    accounts: tuple[Account, ...]
    problems: tuple[str, ...] = field(default_factory=tuple)  # e.g. a following list the API tier cannot read


def add_listed(
    by_handle: dict[str, Account],
    listed: Iterable[str],
    known_ids: Mapping[str, str],
    lookup: Callable[[list[str]], tuple[dict[str, Account], list[str]]],
) -> list[str]:
    """Add the `listed` handles to `by_handle`, ids from the store or else one batched `lookup`.

    Accounts already in `by_handle` (from a following list) keep their entry. Returns the handles the
    network does not know.
    """
    listed = [handle for handle in dict.fromkeys(listed) if handle and handle not in by_handle]
    unknown = [handle for handle in listed if handle not in known_ids]
    found, missing = lookup(unknown) if unknown else ({}, [])
    for handle in listed:
        if handle in found:
            by_handle[handle] = found[handle]
        elif handle in known_ids:
            by_handle[handle] = Account(handle, known_ids[handle])
    return missing


def account_batch(
    account: Account,
    items: Sequence[Item],
    cursor_of: Callable[[Item], str],
    first_run: bool,
    backfill: int,
    to_post: Callable[[Item], Post | None],
    order_key: Callable[[str], Any] = str,
) -> AccountBatch:
    """How every network ends a read of one account: oldest first, a first run trimmed to the newest `backfill`.

    `cursor_of` gives an item's position in the feed (an id or a time, ordered by `order_key`). The cursor is
    the newest item read even when the first run keeps none (backfill 0): the next run goes on from there
    rather than being a first run again.
    """
    ordered = sorted(items, key=lambda item: order_key(cursor_of(item)))
    cursor = cursor_of(ordered[-1]) if ordered else None
    if first_run:
        ordered = ordered[-backfill:] if backfill > 0 else []
    posts = [post for post in map(to_post, ordered) if post is not None]
    return AccountBatch(account, tuple(posts), cursor or None, skipped_without_media=len(ordered) - len(posts))


class NetworkSource(Protocol):
    name: str

    def has_work(self, followed: Sequence[str]) -> bool:
        """Whether anything is configured or followed at all; a source with nothing to read stays silent."""
        ...

    def configured(self) -> str | None:
        """None when the source can run, else why not (missing credentials)."""
        ...

    def targets(self, followed: Sequence[str], known_ids: Mapping[str, str]) -> Targets:
        """Accounts to crawl: the configured list, `following_of`, and `followed` (from the store)."""
        ...

    def account_posts(self, account: Account, cursor: str | None) -> AccountBatch: ...

    def fetch(self, ref: MediaRef) -> bytes: ...


class ListedAccountsSource:
    """What the networks share: settings with `accounts` and `following_of`, the HTTP policy, a byte limit."""

    name: str

    def __init__(self, settings, http: Http, max_bytes: int, meter: Callable[[], None] | None = None):
        self.settings = settings
        self.http = http
        self.max_bytes = max_bytes
        self.meter = meter  # runs before every API request (the crawl's read count and budget)

    def has_work(self, followed: Sequence[str]) -> bool:
        return bool(self.settings.accounts or self.settings.following_of or followed)
