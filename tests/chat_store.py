"""Test helpers for the chat tests: a real store with generated images, predictions and review-queue rows."""

from __future__ import annotations

from bot.chat.commands import Actor
from bot.config import IngestConfig
from bot.ingest.ingest import ingest_post
from bot.sources.records import MediaRef, Post
from classifier.inference import decide
from storage import LABELS, Store, utc_now
from tests import imagegen

REVIEWER = Actor(by="discord:101", via="discord", name="alice", authorised=True)
SECOND_REVIEWER = Actor(by="discord:202", via="discord", name="bob", authorised=True)
STRANGER = Actor(by="discord:303", via="discord", name="mallory", authorised=False)


def ingest_images(store: Store, seeds: list[int], account: str = "alice", source: str = "x") -> list[int]:
    """One post per image through bot.ingest.ingest; returns the media ids in seed order."""
    media_ids = []
    for seed in seeds:
        url = f"https://example.test/{account}/{seed}.png"
        post = Post(
            source=source,
            account=account,
            post_id=f"{account}-{seed}",
            url=f"https://{source}.example/{account}/status/{seed}",
            display_name=account.title(),
            media=(MediaRef(url=url),),
        )
        _is_new, outcomes = ingest_post(
            store, post, lambda ref, seed=seed: imagegen.png(seed, (64, 48)), IngestConfig()
        )
        assert outcomes[0].status == "new", outcomes
        media_ids.append(outcomes[0].media_id)
    return media_ids


def overlay_sha(store: Store, seed: int) -> str:
    return store.derived.put(imagegen.png(10_000 + seed, (32, 32)), "png")


def predict(
    store: Store,
    media_id: int,
    probabilities: tuple[float, float, float],
    borderline: bool = True,
    model_version: str = "m1",
    with_overlay: bool = True,
) -> None:
    """A prediction row as the classifier writes it and, for borderline calls, its review-queue row with the
    classifier's own priority (`classifier.inference.decide`: higher = more uncertain = reviewed first)."""
    decision = decide(probabilities, LABELS, min_confidence=0.6, min_margin=0.15)
    overlay = overlay_sha(store, media_id) if with_overlay else None
    now = utc_now()
    with store.transaction():
        store.execute(
            "INSERT INTO predictions (media_id, model_version, prob_illustration, prob_screenshot, prob_photo, "
            "label, confidence, margin, borderline, overlay_sha256, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                media_id,
                model_version,
                *probabilities,
                decision.label,
                decision.confidence,
                decision.margin,
                int(borderline),
                overlay,
                now,
            ),
        )
        if borderline:
            store.execute(
                "INSERT INTO review_queue (media_id, reason, priority, state, created_at, updated_at) "
                "VALUES (?, ?, ?, 'pending', ?, ?)",
                (media_id, f"{model_version}: {decision.reason or 'borderline'}", decision.priority, now, now),
            )
