"""What a social-network source offers the crawl: its accounts, one account's new posts with a cursor, media bytes.

A network source never touches the store. The crawl (bot/crawl.py) hands it the cursor and the account ids
it knows, ingests the posts it returns, and only then saves the returned cursor, so a crash re-reads rather
than skips.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from bot.records import MediaRef, Post


def normalise_handle(handle: str) -> str:
    """Handles are case-insensitive on every network we read; a leading '@' is decoration."""
    return handle.strip().lstrip("@").lower()


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


def add_listed(by_handle: dict[str, Account], listed: Iterable[str], known_ids: Mapping[str, str],
               lookup: Callable[[list[str]], tuple[dict[str, Account], list[str]]]) -> list[str]:
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

    def account_posts(self, account: Account, cursor: str | None) -> AccountBatch:
        ...

    def fetch(self, ref: MediaRef) -> bytes:
        ...
