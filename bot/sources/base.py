"""The Source interface: a generator of Post records plus a way to fetch each MediaRef's bytes."""

from __future__ import annotations

from typing import Iterator, Protocol

from bot.sources.records import MediaRef, Post


class FetchError(Exception):
    """A media's bytes could not be obtained; the message says why (status, limit, host)."""


class MediaRefused(FetchError):
    """The media is refused for good (over the byte limit, say): it is recorded as a rejected media row."""


class Source(Protocol):
    name: str

    def posts(self) -> Iterator[Post]:
        """New posts since the last run, oldest first where the network allows."""
        ...

    def fetch(self, ref: MediaRef) -> bytes:
        """The media's bytes, or FetchError."""
        ...
