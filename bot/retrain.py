"""Retraining: a new head on every human label (plus the base set), promoted only if not worse, then re-scoring.

The conv trunk is not retrained here, so every vector comes from the `features` cache (computed once when
the media was classified) and a retrain takes seconds. The previous model is scored on the same validation
images as the candidate, and the classifier's promotion rule decides. After a promotion the pending review
queue and recent unlabelled media are re-scored: calls that are no longer borderline leave the queue and new
borderline calls enter it.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bot import app, review
from bot.config import Config
from storage import Store, utc_now

log = logging.getLogger(__name__)

SKIPPED, REFUSED, PROMOTED = "skipped", "refused", "promoted"
REPORTS_DIR = "reports"
STEPS_PER_EPOCH = 40
# Metrics compared in the report, in the order a reader cares about them.
REPORT_METRICS = ("illustration_recall", "macro_f1", "accuracy")


@dataclass
class RetrainOutcome:
    status: str  # skipped | refused | promoted
    reason: str
    new_labels: int
    labelled: int = 0  # human-labelled media used (training + validation)
    base_images: int = 0  # images from [retrain] base_data
    version: str | None = None
    previous: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    previous_scores: dict[str, float] = field(default_factory=dict)
    metrics: dict | None = None
    confusion_png: str | None = None
    epochs: int = 0
    rescored: int = 0
    queue_added: int = 0
    queue_removed: int = 0
    train_seconds: float = 0.0

    def deltas(self) -> dict[str, float]:
        return {name: self.scores[name] - self.previous_scores[name]
                for name in REPORT_METRICS if name in self.scores and name in self.previous_scores}

    def summary(self) -> str:
        """One line for the retrain request's result: "promoted v", "refused v: why", "skipped: why"."""
        if self.status == SKIPPED:
            return f"skipped: {self.reason}"
        return f"{self.status} {self.version}: {self.reason}"

    def as_dict(self) -> dict:
        return {**asdict(self), "deltas": self.deltas()}

    def log_fields(self) -> dict:
        fields: dict[str, Any] = {"status": self.status, "new_labels": self.new_labels}
        if self.status != SKIPPED:
            fields.update(version=self.version, previous=self.previous or "none", labelled=self.labelled,
                          base_images=self.base_images, epochs=self.epochs, train_s=self.train_seconds)
            fields.update({f"{name}": round(value, 4) for name, value in self.scores.items()})
            fields.update({f"delta_{name}": round(value, 4) for name, value in self.deltas().items()})
            fields.update(rescored=self.rescored, queue_added=self.queue_added, queue_removed=self.queue_removed)
        fields["reason"] = self.reason
        return fields

    def report_text(self) -> str:
        if self.status == SKIPPED:
            return f"Retrain skipped: {self.reason}."
        verdict = "promoted to active" if self.status == PROMOTED else "kept inactive"
        lines = [f"Retrain: model {self.version} {verdict} ({self.reason}).",
                 f"Trained on {self.labelled} human-labelled media ({self.new_labels} new) "
                 f"and {self.base_images} base images ({self.epochs} epochs, {self.train_seconds:.1f} s)."]
        for name in REPORT_METRICS:
            if name not in self.scores:
                continue
            line = f"  {name.replace('_', ' ')}: {self.scores[name]:.3f}"
            if name in self.previous_scores:
                delta = self.scores[name] - self.previous_scores[name]
                line += f" (was {self.previous_scores[name]:.3f}, {delta:+.3f})"
            lines.append(line)
        if self.metrics is not None:
            from classifier.evaluate import format_report

            lines.append(format_report(self.metrics))
        if self.status == PROMOTED:
            lines.append(f"Re-scored {self.rescored} media: {self.queue_added} entered the review queue, "
                         f"{self.queue_removed} left it.")
        return "\n".join(lines)


# --- retrain requests (`/retrain` in chat, taken by the runner's retrain job) ---------------------------
# A row with `started_at` NULL is pending. The runner claims every pending request before training and
# records the outcome on them after it.


def pending_request(store: Store) -> dict | None:
    return store.query_one("SELECT * FROM retrain_requests WHERE started_at IS NULL ORDER BY id LIMIT 1")


def request(store: Store, by: str, via: str) -> tuple[int | None, dict | None]:
    """Queue a retrain request: (new request id, None), or (None, the pending request it joins)."""
    with store.transaction():
        pending = pending_request(store)
        if pending is not None:
            return None, pending
        return store.execute("INSERT INTO retrain_requests (requested_by, via, requested_at) VALUES (?, ?, ?)",
                             (by, via, utc_now())).lastrowid, None


def claim_request(store: Store) -> dict | None:
    """For the runner: mark every pending request started and return the oldest, or None."""
    with store.transaction():
        pending = pending_request(store)
        if pending is not None:
            store.execute("UPDATE retrain_requests SET started_at = ? WHERE started_at IS NULL", (utc_now(),))
    return pending


def finish_request(store: Store, request_id: int, result: str) -> None:
    """For the runner: record the outcome ("promoted v7: ...", "failed: ...") of the requests it claimed."""
    store.execute("UPDATE retrain_requests SET finished_at = ?, result = ? "
                  "WHERE started_at IS NOT NULL AND finished_at IS NULL AND id >= ?",
                  (utc_now(), result, request_id))


# --- the retrain ----------------------------------------------------------------------------------------


def last_trained_label_id(store: Store) -> int | None:
    """The newest label id a retrain has already trained with (recorded by `run_retrain` on every version it
    made, promoted or refused), if known. A refused retrain is not repeated on the same labels every night."""
    if store.active_model() is None:
        return None
    return store.scalar("SELECT MAX(json_extract(data_summary, '$.last_label_id')) FROM models")


def count_new_labels(store: Store) -> int:
    """Human labels (not revoked) added since the active model was trained; all of them without one."""
    active = store.active_model()
    if active is None:
        return store.scalar("SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL")
    last_id = last_trained_label_id(store)
    if last_id is not None:
        return store.scalar("SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL AND id > ?", (last_id,))
    # A model trained outside retrain (`illustfeed train`): its creation time is the best boundary.
    return store.scalar("SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL AND at >= ?", (active["created_at"],))


def run_retrain(store: Store, config: Config, *, force: bool = False,
                model_lock: threading.Lock | None = None,
                report: Callable[[str, Path | None], None] | None = None) -> RetrainOutcome:
    """Train, evaluate, maybe promote and re-score; post the report. `force` ignores `min_new_labels`."""
    settings = config.retrain
    new_labels = count_new_labels(store)
    if not force and new_labels < settings.min_new_labels:
        return RetrainOutcome(SKIPPED, f"{new_labels} new labels, fewer than min_new_labels "
                                       f"{settings.min_new_labels}", new_labels)
    with model_lock or nullcontext():
        outcome = train_and_rescore(store, config, new_labels)
    text = outcome.report_text()
    log.info("%s", text.splitlines()[0])
    if report is not None:
        try:
            report(text, Path(outcome.confusion_png) if outcome.confusion_png else None)
        except Exception as error:  # a chat outage must not undo a finished retrain; the log has the report
            log.warning("posting the retrain report failed: %s", error)
    return outcome


def training_items(store: Store, config: Config) -> tuple[list, list]:
    """(human-labelled media, base set images); the base set is optional."""
    from classifier.data import scan_folder, store_labelled

    base = scan_folder(config.retrain.base_data) if config.retrain.base_data else []
    return store_labelled(store), base


def train_and_rescore(store: Store, config: Config, new_labels: int) -> RetrainOutcome:
    """The classifier trains, scores both models on one validation split and promotes by its rule; then
    the queue is re-scored. Callers hold the model lock, so no classification runs in between."""
    from classifier.evaluate import save_confusion_png
    from classifier.runtime import apply_threads, train_and_register
    from classifier.train import TrainOptions
    from classifier.versions import promotion_scores

    started = time.monotonic()
    apply_threads(config.classifier)
    last_label_id = store.scalar("SELECT MAX(id) FROM labels") or 0
    labelled, base = training_items(store, config)
    previous = store.active_model()
    items = labelled + base
    # The classifier's batch of 64 suits a few hundred images; with thousands of labels, larger batches keep
    # an epoch at about STEPS_PER_EPOCH optimizer steps, so early stopping still counts epochs, in seconds.
    batch_size = max(TrainOptions().batch_size, math.ceil(len(items) / STEPS_PER_EPOCH))
    trained = train_and_register(store, config, items, TrainOptions(progress=False, batch_size=batch_size),
                                 source="retrain")
    with store.transaction():
        # Recorded on the row so "new labels since the active model" counts exactly the labels it did not see.
        store.execute("UPDATE models SET data_summary = json_set(COALESCE(data_summary, '{}'), '$.last_label_id', ?)"
                      " WHERE version = ?", (last_label_id, trained["version"]))
    metrics, previous_metrics = trained["metrics"], trained["active_metrics_on_same_split"]
    outcome = RetrainOutcome(
        PROMOTED if trained["activated"] else REFUSED, trained["promotion"], new_labels,
        labelled=len(labelled), base_images=len(base), version=trained["version"],
        previous=previous["version"] if previous else None,
        scores={**promotion_scores(metrics), "accuracy": metrics["accuracy"]},
        previous_scores=({**promotion_scores(previous_metrics), "accuracy": previous_metrics["accuracy"]}
                         if previous_metrics else {}),
        metrics=metrics, epochs=trained["epochs"], train_seconds=time.monotonic() - started,
    )
    png = store.data_dir / REPORTS_DIR / f"retrain-{trained['version']}-confusion.png"
    outcome.confusion_png = str(save_confusion_png(metrics, png, title=f"model {trained['version']} (validation)"))
    if trained["activated"]:
        outcome.rescored, outcome.queue_added, outcome.queue_removed = rescore(store, config)
    return outcome


def rescore(store: Store, config: Config) -> tuple[int, int, int]:
    """Score every media the new active model has not scored (cached vectors: no conv net for media seen
    before), then drop pending review items it is sure about. Returns (rescored, entered, left the queue)."""
    before = review.pending_ids(store)
    model = app.load_model(store, config)
    summary = app.classify(store, config, model)
    with store.transaction():
        review.drop_settled(store, model.version)
    after = review.pending_ids(store)
    return summary.classified, len(after - before), len(before - after)
