"""The Discord feed channel's bookkeeping: which illustrations a channel has had, the next batch to post.

The web feed's rule decides what is an illustration here too, so a channel shows what the gallery shows.
`feed_posts` remembers (media, channel) pairs; a message that failed to send is not marked, so its items go
out at the next tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from bot.config import FeedConfig
from bot.feed.queries import RULE_COLUMNS, media_origin
from storage import Store, utc_now

DEFAULT_FEED_RULE = FeedConfig.rule  # the Discord feed channel shows what the web feed shows


@dataclass(frozen=True)
class ChannelItem:
    media_id: int
    image_path: Path
    size: int
    author: str | None
    post_url: str | None

    @property
    def caption(self) -> str:
        credit = f"by {self.author}" if self.author else "author unknown"
        return f"{credit} - {self.post_url}" if self.post_url else credit


@dataclass
class FeedBatch:
    """Items for one message; `linked` ones are too large to attach and are posted as links only."""

    attached: list[ChannelItem] = field(default_factory=list)
    linked: list[ChannelItem] = field(default_factory=list)

    @property
    def items(self) -> list[ChannelItem]:
        return self.attached + self.linked

    @property
    def text(self) -> str:
        return "\n".join(f"{n}. {item.caption}" for n, item in enumerate(self.items, start=1))


def _unposted_illustrations(store: Store, channel: str, rule: str, limit: int = -1) -> list[dict]:
    """Media that are illustrations under the web feed's `rule` and that `channel` has not had, oldest first."""
    column = RULE_COLUMNS[rule]  # a fixed column name per rule, never user input
    return store.query(
        f"SELECT m.id, m.bytes FROM media_verdict v JOIN media m ON m.id = v.media_id "
        f"WHERE v.{column} = 'illustration' AND m.status = 'ok' "
        f"AND NOT EXISTS (SELECT 1 FROM feed_posts f WHERE f.media_id = m.id AND f.channel = ?) "
        f"ORDER BY m.id LIMIT ?",
        (channel, limit),
    )


def skip_feed_backlog(store: Store, channel: str, rule: str = DEFAULT_FEED_RULE) -> int:
    """On a channel's first start, mark the illustrations already stored as seen (message_id NULL) so only
    new ones are posted; a channel that has had posts keeps its backlog. Returns how many were skipped."""
    with store.transaction():
        if store.scalar("SELECT 1 FROM feed_posts WHERE channel = ? LIMIT 1", (channel,)):
            return 0
        backlog = [row["id"] for row in _unposted_illustrations(store, channel, rule)]
        mark_feed_posted(store, channel, backlog, None)
    return len(backlog)


def feed_batch(
    store: Store, channel: str, limit: int, max_attachment_bytes: int, rule: str = DEFAULT_FEED_RULE
) -> FeedBatch:
    """The oldest illustrations (under the web feed's `rule`) not yet posted to `channel`, at most `limit`,
    attachments kept under `max_attachment_bytes` in total."""
    rows = _unposted_illustrations(store, channel, rule, limit)
    batch = FeedBatch()
    attached_bytes = 0
    for row in rows:
        author, post_url = media_origin(store, row["id"])
        item = ChannelItem(row["id"], store.media_path(row["id"]), row["bytes"] or 0, author, post_url)
        # A file gone from disk is linked, not attached: one missing blob must not stop the feed.
        if item.image_path.is_file() and attached_bytes + item.size <= max_attachment_bytes:
            batch.attached.append(item)
            attached_bytes += item.size
        else:
            batch.linked.append(item)
    return batch


def mark_feed_posted(store: Store, channel: str, media_ids: Iterable[int], message_id: str | None) -> None:
    """Record that `channel` has had these media (in `message_id`; None for a skipped backlog). A pair
    already recorded keeps its first message."""
    now = utc_now()
    with store.transaction():
        store.db["feed_posts"].insert_all(
            (
                {"media_id": media_id, "channel": channel, "message_id": message_id, "posted_at": now}
                for media_id in media_ids
            ),
            ignore=True,
        )
