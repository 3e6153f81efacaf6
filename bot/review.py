"""The review queue: every change to `review_queue`, and the item a reviewer sees, in one place.

A media enters the queue when the classifier's call is borderline (`enqueue`), leaves it when a human labels it
(`record_label`), is set aside by a skip (`skip`), comes back when its only label is undone (`requeue`), and
is dropped when a newer model is sure about it (`drop_settled`). Every client (the terminal, Discord, the web
page) reads the queue through `pending` and `review_item`.

Conventions:
- `priority`: higher is reviewed first. The classifier writes 1 - margin, so the most uncertain call comes
  first; ties go to the oldest row.
- `state`: 'pending' (waiting), 'skipped' (set aside by a reviewer: it comes back after the pending ones),
  'done' (a human answered).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.feed.queries import media_origin
from storage import LABELS, Store, utc_now

OVERLAY_EXTS = ("png", "gif")


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


def pending(store: Store) -> list[dict]:
    """Items waiting for an answer whose media is stored: (media_id, reason, state) rows, most uncertain
    first, then the skipped ones (a skip sets an item aside until the rest are answered, as in hydrus'
    filter; it never drops it)."""
    return store.query(
        "SELECT q.media_id, q.reason, q.state FROM review_queue q JOIN media m ON m.id = q.media_id "
        "WHERE q.state IN ('pending', 'skipped') AND m.status = 'ok' "
        "ORDER BY q.state = 'skipped', CASE WHEN q.state = 'skipped' THEN q.updated_at END, "
        "q.priority DESC, q.created_at, q.media_id")


def pending_ids(store: Store) -> set[int]:
    """Items the model put in the queue and nobody answered yet (skipped ones included)."""
    return {row["media_id"] for row in store.query(
        "SELECT media_id FROM review_queue WHERE state IN ('pending', 'skipped')")}


def pending_count(store: Store) -> int:
    return store.scalar("SELECT COUNT(*) FROM review_queue WHERE state IN ('pending', 'skipped')")


def overlay_path(store: Store, overlay_sha256: str | None) -> Path | None:
    """The stored overlay file (PNG for stills, GIF for animations) of a prediction, if it exists."""
    if not overlay_sha256:
        return None
    for ext in OVERLAY_EXTS:
        if store.derived.exists(overlay_sha256, ext):
            return store.derived.path(overlay_sha256, ext)
    return None


def review_item(store: Store, media_id: int, reason: str = "", pending_total: int = 0) -> ReviewItem:
    prediction = store.query_one("SELECT * FROM latest_prediction WHERE media_id = ?", (media_id,))
    author, post_url = media_origin(store, media_id)
    return ReviewItem(
        media_id=media_id,
        image_path=store.media_path(media_id),
        overlay_path=overlay_path(store, prediction["overlay_sha256"]) if prediction else None,
        probabilities={label: prediction[f"prob_{label}"] for label in LABELS} if prediction else None,
        predicted=prediction["label"] if prediction else None,
        model_version=prediction["model_version"] if prediction else None,
        author=author, post_url=post_url, reason=reason, pending=pending_total,
    )


def next_item(store: Store) -> ReviewItem | None:
    """The most uncertain pending item, or None when the queue is empty."""
    rows = pending(store)
    if not rows:
        return None
    return review_item(store, rows[0]["media_id"], rows[0]["reason"], len(rows))


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
        (media_id, reason, priority, now, now)).rowcount


def record_label(store: Store, media_id: int, label: str, by: str, via: str) -> tuple[int, dict | None]:
    """Add a human label and settle the media's review item, in one transaction; returns (label row id, the
    label that counted before). Reading the previous label in the same transaction orders two reviewers
    answering at once, so the second one learns about the first."""
    with store.transaction():
        previous = store.current_label(media_id)
        label_id = store.add_label(media_id, label, by=by, via=via)
        store.execute("UPDATE review_queue SET state = 'done', updated_at = ? WHERE media_id = ? AND state != 'done'",
                      (utc_now(), media_id))
    return label_id, previous


def skip(store: Store, media_id: int) -> int:
    """Set a waiting item aside, behind every other (a skipped one goes to the back again); returns how many
    rows changed (0: it was not waiting)."""
    return store.execute(
        "UPDATE review_queue SET state = 'skipped', updated_at = ? WHERE media_id = ? "
        "AND state IN ('pending', 'skipped')", (utc_now(), media_id)).rowcount


def requeue(store: Store, media_id: int) -> int:
    """An answered item whose label was undone waits again; returns how many rows changed."""
    return store.execute(
        "UPDATE review_queue SET state = 'pending', updated_at = ? WHERE media_id = ? AND state = 'done'",
        (utc_now(), media_id)).rowcount


def drop_settled(store: Store, model_version: str) -> int:
    """Remove waiting items whose latest prediction, by `model_version`, is no longer borderline."""
    return store.execute(
        "DELETE FROM review_queue WHERE state IN ('pending', 'skipped') AND media_id IN "
        "(SELECT media_id FROM latest_prediction WHERE model_version = ? AND borderline = 0)",
        (model_version,)).rowcount
