"""Feed queries: pages of media by final label, newest first, with the post that credits each one.

"Newest first" is the order the bot first stored the media (`media.first_seen_at`); the media id is assigned
in that same order and is the paging key, so a page boundary is a plain `id < cursor` that media arriving
later (always with a higher id) can never shift: paging has no gaps and no repeats while the store grows.
The label test reads `media_verdict` (kept current by triggers, schema migration 3, FEED_V3) through an index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from storage import LABELS, Store

# Feed rule -> media_verdict column holding the label that rule trusts (never user input in SQL).
RULE_COLUMNS = {
    "human_then_confident": "final_label",
    "human_only": "human_label",
    "any_prediction": "any_label",
}


class FeedQueryError(ValueError):
    """A feed request with a bad label, cursor or limit; the message names the value."""


@dataclass(frozen=True)
class Credit:
    """The first stored post that carried a media: who posted it, where, when, with which alt text."""

    source: str
    handle: str
    display_name: str | None
    post_url: str | None
    text: str | None
    created_at: str | None
    alt_text: str | None
    posts: int  # how many stored posts carry this media (reposts included)

    @property
    def author(self) -> str:
        return self.display_name or self.handle


@dataclass(frozen=True)
class FeedItem:
    media_id: int
    sha256: str
    ext: str
    mime: str
    width: int
    height: int
    bytes: int
    first_seen_at: str
    label: str | None  # None: no human label and no confident call yet (a detail page can show those)
    decided_by: str  # "human" or "model"
    credit: Credit | None

    @property
    def published_at(self) -> str:
        """When it was posted, else when the bot first saw it."""
        return (self.credit.created_at if self.credit else None) or self.first_seen_at


@dataclass(frozen=True)
class FeedPage:
    items: list[FeedItem]
    next_cursor: str | None  # None on the last page


def parse_label(value: str | None) -> str:
    label = value or "illustration"
    if label not in LABELS:
        raise FeedQueryError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    return label


def parse_cursor(value: str | None) -> int | None:
    """The opaque cursor is the id of the last media on the previous page."""
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise FeedQueryError(f"invalid cursor {value!r}; use the next_cursor of a previous page")
    return int(value)


def parse_account(value: str | None) -> tuple[str, str] | None:
    """`SOURCE:HANDLE` (as /api/media names an author in `post.source` and `post.handle`) -> (source, handle)."""
    if not value:
        return None
    source, sep, handle = value.partition(":")
    if not sep or not source or not handle or len(value) > 300:
        raise FeedQueryError(f"invalid account {value[:80]!r}; expected SOURCE:HANDLE, e.g. bluesky:mika.bsky.social")
    return source, handle


def parse_limit(value: str | None, default: int, maximum: int) -> int:
    if not value:
        return default
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= maximum:
        raise FeedQueryError(f"invalid limit {value!r}; expected an integer from 1 to {maximum}")
    return int(value)


def feed_page(
    store: Store,
    rule: str,
    label: str = "illustration",
    cursor: int | None = None,
    limit: int = 48,
    account: tuple[str, str] | None = None,
) -> FeedPage:
    """Up to `limit` media whose label under `rule` is `label`, newest first, older than `cursor`; with
    `account` (source, handle), only media that account posted (reposts of others' media included)."""
    column = RULE_COLUMNS[rule]
    # One artist's media are found from their posts (a few rows), not by testing every media of the feed.
    by_account = (
        "AND v.media_id IN (SELECT pm.media_id FROM accounts a JOIN posts p ON p.account_id = a.id "
        "JOIN post_media pm ON pm.post_id = p.id WHERE a.source = :source AND a.handle = :handle) "
        if account
        else ""
    )
    # One row more than asked says whether a next page exists without a COUNT.
    rows = store.query(
        f"SELECT m.id, m.sha256, m.ext, m.mime, m.width, m.height, m.bytes, m.first_seen_at, "
        # Every rule lets a human label win, so a human label present is the one that decided.
        f"  v.human_label IS NOT NULL AS by_human "
        f"FROM media_verdict v JOIN media m ON m.id = v.media_id "
        f"WHERE v.{column} = :label AND v.media_id < :before AND m.status = 'ok' {by_account}"
        # Known missing or wrong files (`illustfeed check`, the server) would be broken tiles: out of sight
        # until a crawl or import restores them (`Store.restore_media`).
        f"AND NOT EXISTS (SELECT 1 FROM damaged_media d WHERE d.media_id = v.media_id) "
        f"ORDER BY v.media_id DESC LIMIT :limit",
        {
            "label": label,
            "before": cursor if cursor is not None else 2**62,
            "limit": limit + 1,
            "source": account[0] if account else None,
            "handle": account[1] if account else None,
        },
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    credits = credits_for(store, [row["id"] for row in rows])
    items = [_feed_item(row, label, credits.get(row["id"])) for row in rows]
    return FeedPage(items, str(rows[-1]["id"]) if has_more else None)


def _feed_item(row: dict, label: str | None, credit: Credit | None) -> FeedItem:
    """A FeedItem from a media row carrying `by_human` (whether a human label decided)."""
    return FeedItem(
        media_id=row["id"],
        sha256=row["sha256"],
        ext=row["ext"],
        mime=row["mime"],
        width=row["width"],
        height=row["height"],
        bytes=row["bytes"],
        first_seen_at=row["first_seen_at"],
        label=label,
        decided_by="human" if row["by_human"] else "model",
        credit=credit,
    )


def media_detail(store: Store, rule: str, media_id: int) -> FeedItem | None:
    """One stored media as the feed sees it: its label under `rule` (None: undecided), who decided, its credit."""
    column = RULE_COLUMNS[rule]
    row = store.query_one(
        f"SELECT m.id, m.sha256, m.ext, m.mime, m.width, m.height, m.bytes, m.first_seen_at, v.{column} AS label, "
        f"v.human_label IS NOT NULL AS by_human FROM media m LEFT JOIN media_verdict v ON v.media_id = m.id "
        f"WHERE m.id = ? AND m.status = 'ok'",
        (media_id,),
    )
    if row is None:
        return None
    return _feed_item(row, row["label"], credits_for(store, [media_id]).get(media_id))


def credits_for(store: Store, media_ids: list[int]) -> dict[int, Credit]:
    """media id -> the first stored post carrying it (lowest post id), with the number of such posts."""
    if not media_ids:
        return {}
    placeholders = ", ".join("?" for _ in media_ids)
    rows = store.query(
        f"SELECT pm.media_id, pm.alt_text, p.url, p.text, p.created_at, a.source, a.handle, a.display_name "
        f"FROM post_media pm JOIN posts p ON p.id = pm.post_id JOIN accounts a ON a.id = p.account_id "
        f"WHERE pm.media_id IN ({placeholders}) ORDER BY pm.media_id, p.id",
        media_ids,
    )
    first_rows: dict[int, dict] = {}
    posts_per_media: Counter[int] = Counter()
    for row in rows:
        posts_per_media[row["media_id"]] += 1
        first_rows.setdefault(row["media_id"], row)
    return {
        media_id: Credit(
            source=row["source"],
            handle=row["handle"],
            display_name=row["display_name"],
            post_url=row["url"],
            text=row["text"],
            created_at=row["created_at"],
            alt_text=row["alt_text"],
            posts=posts_per_media[media_id],
        )
        for media_id, row in first_rows.items()
    }


def media_origin(store: Store, media_id: int) -> tuple[str | None, str | None]:
    """(author as "Name (@handle on source)", post url) of the first post that carried the media."""
    credit = credits_for(store, [media_id]).get(media_id)
    if credit is None:
        return None, None
    handle = f"@{credit.handle} on {credit.source}"
    return (f"{credit.display_name} ({handle})" if credit.display_name else handle), credit.post_url


def visible_media(store: Store, sha256: str) -> dict | None:
    """The stored media row for a sha256 when it can be served (status ok), else None."""
    return store.query_one(
        "SELECT id, sha256, ext, mime, width, height, bytes FROM media WHERE sha256 = ? AND status = 'ok'", (sha256,)
    )


def feed_counts(store: Store, rule: str) -> dict:
    """Counts for /healthz: stored media and how many of them each label holds under the feed rule."""
    column = RULE_COLUMNS[rule]
    # Counted on the (label, media_id) index alone, then the few media no longer served taken back out:
    # joining every verdict to its media row costs a table walk.
    by_label = {
        label: store.scalar(f"SELECT COUNT(*) FROM media_verdict WHERE {column} = ?", (label,)) for label in LABELS
    }
    for row in store.query(
        f"SELECT v.{column} AS label, COUNT(*) AS n FROM media m JOIN media_verdict v ON v.media_id = m.id "
        f"WHERE m.status IN ('rejected', 'removed') AND v.{column} IS NOT NULL GROUP BY v.{column}"
    ):
        by_label[row["label"]] -= row["n"]
    return {
        "media": store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'"),
        "posts": store.scalar("SELECT COUNT(*) FROM posts"),
        "by_label": by_label,
    }
