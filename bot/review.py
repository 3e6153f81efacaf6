"""The review queue: every change to `review_queue`, and the item a reviewer sees, in one place.

A media enters the queue when the classifier's call is borderline (`enqueue`), leaves it when a human labels it
(`record_label`), is set aside by a skip (`skip`), comes back when its only label is undone (`requeue`), and
is dropped when a newer model is sure about it (`drop_settled`). Every client (the terminal, Discord, the web
page) reads the queue through `next_item`.

Conventions:
- `priority`: higher is reviewed first. The classifier writes 1 - margin, so the most uncertain call comes
  first; ties go to the oldest row.
- `state`: 'pending' (waiting), 'skipped' (set aside by a reviewer: it comes back after the pending ones),
  'done' (a human answered).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bot.feed.queries import media_origin
from storage import LABELS, Store, utc_now

OVERLAY_EXTS = ("png", "gif", "mp4")


@dataclass(frozen=True)
class ReviewItem:
    media_id: int
    image_path: Path
    overlay_path: Path | None
    probabilities: dict[str, float] | None
    predicted: str | None
    model_version: str | None
    author: str | None
    post_url: str | None
    reason: str
    pending: int  # queue size including this item


# --- reading the queue ----------------------------------------------------------------------------------


# The head of each part of the queue, read through the (state, priority) index and stopped at the first
# stored media: the queue can hold tens of thousands of items and a reviewer waits on this for every answer.
_HEAD = {
    "pending": "ORDER BY q.priority DESC, q.created_at, q.media_id",
    "skipped": "ORDER BY q.updated_at, q.media_id",  # in the order they were set aside
}


def head(store: Store) -> dict | None:
    """The item to answer next, as a (media_id, reason, state) row: the most uncertain pending one, else the
    one skipped longest ago (a skip sets an item aside until the rest is answered, as in hydrus' filter; it
    never drops it), else None."""
    for state, order in _HEAD.items():
        row = store.query_one(
            f"SELECT q.media_id, q.reason, q.state FROM review_queue q JOIN media m ON m.id = q.media_id "
            f"WHERE q.state = ? AND m.status = 'ok' {order} LIMIT 1",
            (state,),
        )
        if row is not None:
            return row
    return None


def pending_ids(store: Store) -> set[int]:
    """Items the model put in the queue and nobody answered yet (skipped ones included)."""
    return {
        row["media_id"]
        for row in store.query("SELECT media_id FROM review_queue WHERE state IN ('pending', 'skipped')")
    }


def reviewable_count(store: Store) -> int:
    """Waiting items whose media is stored: what a reviewer can still answer ("N waiting for review")."""
    return store.scalar(
        "SELECT COUNT(*) FROM review_queue q JOIN media m ON m.id = q.media_id "
        "WHERE q.state IN ('pending', 'skipped') AND m.status = 'ok'"
    )


def pending_count(store: Store) -> int:
    return store.scalar("SELECT COUNT(*) FROM review_queue WHERE state IN ('pending', 'skipped')")


def overlay_path(store: Store, overlay_sha256: str | None) -> Path | None:
    """The stored overlay file (PNG for stills, GIF or MP4 for animations) of a prediction, if it exists."""
    if not overlay_sha256:
        return None
    for ext in OVERLAY_EXTS:
        if store.derived.exists(overlay_sha256, ext):
            return store.derived.path(overlay_sha256, ext)
    return None


def review_item(store: Store, media_id: int, reason: str = "", pending_total: int = 0) -> ReviewItem:
    # The newest prediction row, as the `latest_prediction` view defines it, through the per-media index (the
    # view groups the whole table: 90 ms per item at 100k media).
    prediction = store.query_one("SELECT * FROM predictions WHERE media_id = ? ORDER BY id DESC LIMIT 1", (media_id,))
    author, post_url = media_origin(store, media_id)
    return ReviewItem(
        media_id=media_id,
        image_path=store.media_path(media_id),
        overlay_path=overlay_path(store, prediction["overlay_sha256"]) if prediction else None,
        probabilities={label: prediction[f"prob_{label}"] for label in LABELS} if prediction else None,
        predicted=prediction["label"] if prediction else None,
        model_version=prediction["model_version"] if prediction else None,
        author=author,
        post_url=post_url,
        reason=reason,
        pending=pending_total,
    )


def next_item(store: Store) -> ReviewItem | None:
    """The item to answer next (see `head`), or None when the queue is empty."""
    row = head(store)
    if row is None:
        return None
    return review_item(store, row["media_id"], row["reason"], reviewable_count(store))


# --- changing the queue ---------------------------------------------------------------------------------


def enqueue(store: Store, media_id: int, reason: str, priority: float, now: str | None = None) -> int:
    """Queue a borderline call (inside the caller's transaction). A pending item takes the newer reason and
    priority; a skipped or answered one stays as it is. Returns 1 when a row was added or updated."""
    now = now or utc_now()
    return store.execute(
        "INSERT INTO review_queue (media_id, reason, priority, state, created_at, updated_at)"
        " VALUES (?, ?, ?, 'pending', ?, ?) ON CONFLICT (media_id) DO UPDATE SET"
        " reason = excluded.reason, priority = excluded.priority, updated_at = excluded.updated_at"
        " WHERE review_queue.state = 'pending'",
        (media_id, reason, priority, now, now),
    ).rowcount


def record_label(store: Store, media_id: int, label: str, by: str, via: str) -> tuple[int, dict | None]:
    """Add a human label and settle the media's review item, in one transaction; returns (label row id, the
    label that counted before). Reading the previous label in the same transaction orders two reviewers
    answering at once, so the second one learns about the first."""
    with store.transaction():
        previous = store.current_label(media_id)
        label_id = store.add_label(media_id, label, by=by, via=via)
        store.execute(
            "UPDATE review_queue SET state = 'done', updated_at = ? WHERE media_id = ? AND state != 'done'",
            (utc_now(), media_id),
        )
    return label_id, previous


def skip(store: Store, media_id: int) -> int:
    """Set a waiting item aside, behind every other (a skipped one goes to the back again); returns how many
    rows changed (0: it was not waiting)."""
    # Microseconds: skipped items come back in the order they were skipped, and a reviewer skips several a second.
    skipped_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return store.execute(
        "UPDATE review_queue SET state = 'skipped', updated_at = ? WHERE media_id = ? "
        "AND state IN ('pending', 'skipped')",
        (skipped_at, media_id),
    ).rowcount


def requeue(store: Store, media_id: int) -> int:
    """An answered item whose label was undone waits again; returns how many rows changed."""
    return store.execute(
        "UPDATE review_queue SET state = 'pending', updated_at = ? WHERE media_id = ? AND state = 'done'",
        (utc_now(), media_id),
    ).rowcount


def drop_settled(store: Store, model_version: str) -> int:
    """Remove waiting items whose latest prediction, by `model_version`, is no longer borderline."""
    return store.execute(
        "DELETE FROM review_queue WHERE state IN ('pending', 'skipped') AND media_id IN "
        "(SELECT media_id FROM latest_prediction WHERE model_version = ? AND borderline = 0)",
        (model_version,),
    ).rowcount
