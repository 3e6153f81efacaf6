"""Plain records passed between stages: what a source yields, whatever network it came from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaRef:
    """One image or video attached to a post. `url` is http(s) for networks, a local path for the folder source."""

    url: str
    kind: str = "photo"  # photo | animated_gif | video
    alt: str | None = None
    # Tried in order when `url` is refused for good (over the byte limit, not a media file): a smaller
    # rendition, then the preview still of a video.
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Post:
    source: str  # "folder", "x", "bluesky", "mastodon"
    account: str  # handle, unique within the source
    post_id: str  # unique within the source
    url: str | None = None
    text: str | None = None
    created_at: str | None = None  # ISO 8601
    media: tuple[MediaRef, ...] = field(default_factory=tuple)
    account_id: str | None = None  # the network's own id for the account, when it has one
    display_name: str | None = None
