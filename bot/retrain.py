"""Retraining: a new head on every human label (plus the base set), promoted only if not worse, then re-scoring.

The conv trunk is not retrained here, so every vector comes from the `features` cache (computed once when
the media was classified) and a retrain takes seconds. The previous model is scored on the same validation
images as the candidate, and the classifier's promotion rule decides. After a promotion the pending review
queue and recent unlabelled media are re-scored: calls that are no longer borderline leave the queue and new
borderline calls enter it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bot.config import Config
from storage import Store

log = logging.getLogger(__name__)

SKIPPED, REFUSED, PROMOTED = "skipped", "refused", "promoted"
REPORTS_DIR = "reports"
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
    rescored: int = 0
    queue_added: int = 0
    queue_removed: int = 0
    train_seconds: float = 0.0

    def deltas(self) -> dict[str, float]:
        return {name: self.scores[name] - self.previous_scores[name]
                for name in REPORT_METRICS if name in self.scores and name in self.previous_scores}

    def as_dict(self) -> dict:
        return {**asdict(self), "deltas": self.deltas()}

    def log_fields(self) -> dict:
        fields: dict[str, Any] = {"status": self.status, "new_labels": self.new_labels}
        if self.status != SKIPPED:
            fields.update(version=self.version, previous=self.previous or "none", labelled=self.labelled,
                          base_images=self.base_images, train_s=self.train_seconds)
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
                 f"and {self.base_images} base images in {self.train_seconds:.1f} s."]
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


def last_trained_label_id(store: Store) -> int | None:
    """The newest label id the active model was trained with (recorded by `run_retrain`), if known."""
    active = store.active_model()
    if active is None:
        return None
    summary = json.loads(active["data_summary"] or "{}")
    return summary.get("last_label_id")


def count_new_labels(store: Store) -> int:
    """Human labels (not revoked) added since the active model was trained; all of them without one."""
    active = store.active_model()
    if active is None:
        return store.scalar("SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL")
    last_id = last_trained_label_id(store)
    if last_id is not None:
        return store.scalar("SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL AND id > ?", (last_id,))
    # A model trained outside retrain (`illustfeed train`): its creation time is the best boundary.
    return store.scalar("SELECT COUNT(*) FROM labels WHERE revoked_at IS NULL AND at > ?", (active["created_at"],))


def run_retrain(store: Store, config: Config, *, force: bool = False,
                model_lock: threading.Lock | None = None,
                report: Callable[[str, Path | None], None] | None = None) -> RetrainOutcome:
    """Train, evaluate, maybe promote and re-score; post the report. `force` ignores `min_new_labels`."""
    settings = config.retrain
    new_labels = count_new_labels(store)
    if not force and new_labels < settings.min_new_labels:
        return RetrainOutcome(SKIPPED, f"{new_labels} new labels, fewer than min_new_labels "
                                       f"{settings.min_new_labels}", new_labels)
    outcome = train_and_decide(store, config, new_labels, model_lock or nullcontext())
    text = outcome.report_text()
    log.info("%s", text.splitlines()[0])
    if report is not None:
        try:
            report(text, Path(outcome.confusion_png) if outcome.confusion_png else None)
        except Exception as error:  # a chat outage must not undo a finished retrain
            log.warning("posting the retrain report failed: %s", error)
    return outcome


def train_and_decide(store: Store, config: Config, new_labels: int, model_lock) -> RetrainOutcome:
    from classifier.data import scan_folder, store_labelled
    from classifier.evaluate import save_confusion_png
    from classifier.train import TrainOptions, evaluate_on_validation, train_model
    from classifier.versions import activate, compare_for_promotion, promotion_scores, register_model
    from classifier.model import load_active_model
    from classifier.cache import vector_cache

    started = time.monotonic()
    last_label_id = store.scalar("SELECT MAX(id) FROM labels") or 0
    labelled = store_labelled(store)
    base = scan_folder(config.retrain.base_data) if config.retrain.base_data else []
    previous = load_active_model(store, config)
    result = train_model(previous, labelled + base, TrainOptions(progress=False),
                         cache=vector_cache(store, previous), parent=store.active_model() and previous.version,
                         source="retrain")
    candidate = result.model
    candidate.data_summary["last_label_id"] = last_label_id
    previous_metrics = (evaluate_on_validation(previous, result) if store.active_model() is not None else None)
    decision = compare_for_promotion(candidate.metrics, previous_metrics)
    outcome = RetrainOutcome(
        PROMOTED if decision.promote else REFUSED, decision.reason, new_labels,
        labelled=len(labelled), base_images=len(base), version=candidate.version,
        previous=store.active_model()["version"] if store.active_model() else None,
        scores={**promotion_scores(candidate.metrics), "accuracy": candidate.metrics["accuracy"]},
        previous_scores=({**promotion_scores(previous_metrics), "accuracy": previous_metrics["accuracy"]}
                         if previous_metrics else {}),
        metrics=candidate.metrics, train_seconds=time.monotonic() - started,
    )
    png = store.data_dir / REPORTS_DIR / f"{candidate.version}-confusion.png"
    outcome.confusion_png = str(save_confusion_png(candidate.metrics, png, title=f"model {candidate.version}"))
    with model_lock:
        register_model(store, candidate)
        if decision.promote:
            activate(store, candidate.version)
            outcome.rescored, outcome.queue_added, outcome.queue_removed = rescore(store, config, candidate)
    return outcome


def rescore(store: Store, config: Config, model) -> tuple[int, int, int]:
    """Re-score the pending review queue and recent unlabelled media; returns (rescored, added, removed)."""
    from classifier.inference import classify_pending

    pending_before = {row["media_id"] for row in store.query("SELECT media_id FROM review_queue WHERE state = 'pending'")}
    recent = [row["id"] for row in store.query(
        "SELECT m.id FROM media m WHERE m.status = 'ok' AND m.first_seen_at >= datetime('now', ?) "
        "AND NOT EXISTS (SELECT 1 FROM current_label c WHERE c.media_id = m.id)",
        (f"-{config.retrain.rescore_recent_days} days",))]
    media_ids = sorted(pending_before | set(recent))
    result = classify_pending(store, model, config.classifier, media_ids=media_ids)
    pending_after = {row["media_id"] for row in store.query("SELECT media_id FROM review_queue WHERE state = 'pending'")}
    return result.classified, len(pending_after - pending_before), len(pending_before - pending_after)
