"""The store at a glance: counts by final label, queue, labels, the active model and damaged media."""

from __future__ import annotations

from bot import review
from classifier import shipped_default_version
from storage import Store


def store_status(store: Store) -> dict:
    by_label = {
        row["label"]: row["n"]
        for row in store.query(
            # media_verdict keeps each media's latest human label and prediction current (triggers).
            "SELECT v.final_label AS label, COUNT(*) AS n FROM media m"
            " LEFT JOIN media_verdict v ON v.media_id = m.id"
            " WHERE m.status = 'ok' GROUP BY v.final_label"
        )
    }
    unlabelled = by_label.pop(None, 0)
    active = store.active_model()
    return {
        "media_total": store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'"),
        "posts_total": store.scalar("SELECT COUNT(*) FROM posts"),
        "accounts_total": store.scalar("SELECT COUNT(*) FROM accounts"),
        "rejected_total": store.scalar("SELECT COUNT(*) FROM media WHERE status = 'rejected'"),
        "by_label": by_label,
        "undecided": unlabelled,
        "review_pending": review.pending_count(store),
        "review_skipped": store.scalar("SELECT COUNT(*) FROM review_queue WHERE state = 'skipped'"),
        "labels_total": store.scalar("SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL"),
        "active_model": active["version"] if active else None,
        # What classifies while no version is active (a fresh store registers it on its first classify).
        "shipped_default": None if active else shipped_default_version(),
        "damaged": store.damaged_count(),
        "read_only": store.read_only,
    }


def format_status(status: dict) -> str:
    labels = ", ".join(f"{label} {count}" for label, count in sorted(status["by_label"].items())) or "none yet"
    return "\n".join(
        [
            f"media: {status['media_total']} stored, {status['rejected_total']} rejected, "
            f"{status['posts_total']} posts from {status['accounts_total']} accounts",
            f"final labels: {labels}; undecided {status['undecided']}",
            f"review queue: {status['review_pending']} waiting ({status['review_skipped']} skipped); "
            f"human labels: {status['labels_total']}",
            f"active model: {status['active_model'] or _no_active_model(status)}",
        ]
        + (
            [
                f"damaged: {status['damaged']} media whose stored file is missing or wrong (see `illustfeed check`; "
                "importing or crawling the originals again restores them)"
            ]
            if status["damaged"]
            else []
        )
        + (["data dir: read-only (opened for reading only)"] if status["read_only"] else [])
    )


def _no_active_model(status: dict) -> str:
    shipped = status.get("shipped_default")
    return f"{shipped} (the shipped default; no trained model yet)" if shipped else "none"
