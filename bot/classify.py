"""The classify stage: stored media without a prediction -> predictions, cached vectors, review entries.

The classifier (`classifier/`) turns images into probabilities; this stage reads what is pending from the
store, decides which calls are borderline, stores predictions and vectors per batch, renders the Grad-CAM
overlay of a borderline call (through the `OverlayRenderer` the app hands in) and queues it for review.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from bot import review
from classifier.cache import StoreVectorCache
from classifier.inference import FeatureRunner, ImageResult, decide, run_classifier
from classifier.model import ImageClassifier
from storage import Store, utc_now
from storage.check import missing_overlays, regenerate_overlay
from storage.store import CLASSIFY_REJECT_PREFIX

log = logging.getLogger(__name__)

# (model, image source, the media's probabilities) -> (encoded overlay, extension: "png"; "gif" or "mp4" when
# animated).
OverlayRenderer = Callable[[ImageClassifier, Any, Sequence[float]], tuple[bytes, str]]


@dataclass
class ClassifySummary:
    model_version: str
    classified: int = 0
    from_cached_features: int = 0
    borderline: int = 0
    queued_for_review: int = 0
    overlays: int = 0
    overlays_restored: int = 0  # missing overlays of queued borderline calls made again
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    precision: str = ""

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "problems"}


def pending_media(store: Store, model_version: str, limit: int | None = None) -> list[dict]:
    """Stored media (status ok) without a prediction from `model_version`, oldest first."""
    sql = (
        "SELECT m.id, m.sha256, m.ext FROM media m WHERE m.status = 'ok' AND NOT EXISTS "
        "(SELECT 1 FROM predictions p WHERE p.media_id = m.id AND p.model_version = ?) ORDER BY m.id"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return store.query(sql, (model_version,))


def classify_pending(
    store: Store,
    model: ImageClassifier,
    *,
    runner: FeatureRunner | None = None,
    borderline_confidence: float = 0.6,
    borderline_margin: float = 0.15,
    batch_size: int = 16,
    max_frames: int = 4,
    overlay: OverlayRenderer | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> ClassifySummary:
    """Predict every pending media with `model`; store predictions, feature vectors and review items.

    Media whose vector for this model's trunk is cached skip the conv net. Each batch of results is written
    in one transaction (prediction + vector + review row together), so an interruption loses at most
    the batch in flight, and a rerun picks up where it stopped.
    """
    from tqdm import tqdm

    summary = ClassifySummary(model.version)
    rows = pending_media(store, model.version, limit)
    if not rows:
        if overlay is not None:
            restore_missing_overlays(store, model, overlay, summary)
        return summary
    cache = StoreVectorCache(store, model.feature_key)
    cached = cache.get([row["id"] for row in rows])
    bar = tqdm(total=len(rows), desc=f"classify {model.version}", unit="img", disable=not progress)

    def from_cache() -> Iterator[ImageResult]:
        ids = list(cached)
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            with torch.inference_mode():
                probabilities = model.probabilities_from_vectors(torch.stack([cached[i] for i in chunk]))
            for media_id, probs in zip(chunk, probabilities.tolist()):
                yield ImageResult(media_id, probs, cached[media_id], 0)

    to_run = [(row["id"], store.blobs.path(row["sha256"], row["ext"])) for row in rows if row["id"] not in cached]
    sources = dict(to_run)
    if to_run:
        runner = runner or FeatureRunner(model)
    computed = (
        run_classifier(model, to_run, runner=runner, batch_size=batch_size, max_frames=max_frames)
        if to_run
        else iter(())
    )
    summary.from_cached_features = len(cached)
    chunk: list[ImageResult] = []
    for result in itertools.chain(from_cache(), computed):
        chunk.append(result)
        if len(chunk) >= batch_size:
            _store_results(
                store, model, chunk, cached, sources, summary, borderline_confidence, borderline_margin, overlay
            )
            bar.update(len(chunk))
            chunk = []
    if chunk:
        _store_results(store, model, chunk, cached, sources, summary, borderline_confidence, borderline_margin, overlay)
        bar.update(len(chunk))
    bar.close()
    if overlay is not None:
        restore_missing_overlays(store, model, overlay, summary)
    summary.precision = runner.precision if runner is not None else "cached"
    return summary


def restore_missing_overlays(
    store: Store, model: ImageClassifier, overlay: OverlayRenderer, summary: ClassifySummary
) -> None:
    """Render again the overlays of this model's queued borderline calls that have none (a full disk when they
    were classified, a file deleted since), so review shows them once there is room."""

    def make(store: Store, media_id: int) -> tuple[bytes, str]:
        prediction = store.query_one(
            "SELECT prob_illustration, prob_screenshot, prob_photo FROM predictions"
            " WHERE media_id = ? AND model_version = ?",
            (media_id, model.version),
        )
        return overlay(model, _media_source(store, media_id), [prediction[f"prob_{label}"] for label in model.labels])

    for media_id in missing_overlays(store, model.version):
        try:
            regenerate_overlay(store, media_id, make)
        except Exception as error:  # as at classification: an explanation is a nicety
            log.warning("overlay for media %s failed again: %s", media_id, error)
            summary.problems.append(f"media {media_id}: overlay failed: {error}")
            continue
        summary.overlays_restored += 1


def _store_results(
    store: Store,
    model: ImageClassifier,
    results: list[ImageResult],
    cached: dict,
    sources: dict,
    summary: ClassifySummary,
    borderline_confidence: float,
    borderline_margin: float,
    overlay: OverlayRenderer | None,
) -> None:
    now = utc_now()
    decided = []
    for result in results:
        if result.error is not None:
            summary.failed += 1
            summary.problems.append(f"media {result.key}: {result.error}")
            log.warning("media %s could not be classified: %s", result.key, result.error)
            # Ingest decoded it once, so its stored file is missing or damaged: record that on the row instead
            # of decoding it again on every poll.
            store.execute(
                "UPDATE media SET status = 'rejected', reject_reason = ? WHERE id = ? AND status = 'ok'",
                (f"{CLASSIFY_REJECT_PREFIX} {result.error}", result.key),
            )
            continue
        decision = decide(result.probabilities, model.labels, borderline_confidence, borderline_margin, model.policy)
        overlay_sha256 = None
        # Overlays serve the review queue; a media a human already labelled never enters it.
        if decision.borderline and overlay is not None and store.current_label(result.key) is None:
            # Rendered before the transaction: Grad-CAM takes a forward+backward pass, the write lock should not wait on it.
            try:
                data, ext = overlay(
                    model, sources.get(result.key) or _media_source(store, result.key), result.probabilities
                )
                overlay_sha256 = store.derived.put(data, ext)
                summary.overlays += 1
            except Exception as error:  # an explanation is a nicety; the prediction must still be stored
                log.warning("overlay for media %s failed: %s", result.key, error)
                summary.problems.append(f"media {result.key}: overlay failed: {error}")
        decided.append((result, decision, overlay_sha256))
    new_vectors = {result.key: result.vector for result, _, _ in decided if result.key not in cached}
    with store.transaction():
        for result, decision, overlay_sha256 in decided:
            probs = dict(zip(model.labels, result.probabilities))
            store.execute(
                "INSERT INTO predictions (media_id, model_version, prob_illustration, prob_screenshot, prob_photo,"
                " label, confidence, margin, borderline, overlay_sha256, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (media_id, model_version) DO NOTHING",
                (
                    result.key,
                    model.version,
                    probs["illustration"],
                    probs["screenshot"],
                    probs["photo"],
                    decision.label,
                    decision.confidence,
                    decision.margin,
                    int(decision.borderline),
                    overlay_sha256,
                    now,
                ),
            )
            summary.classified += 1
            if not decision.borderline:
                continue
            summary.borderline += 1
            if store.current_label(result.key):
                continue  # a human already answered; nothing to review
            summary.queued_for_review += review.enqueue(
                store, result.key, f"{model.version}: {decision.reason}", decision.priority, now
            )
        if new_vectors:
            StoreVectorCache(store, model.feature_key).put(new_vectors)


def _media_source(store: Store, media_id: int) -> Path:
    return store.media_path(media_id)
