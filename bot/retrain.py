"""Retraining: a new head on the shipped base vectors plus every human label, promoted only if not worse, then re-scoring.

The conv trunk is not retrained here, so every vector comes from the `features` cache (computed once when
the media was classified) or the shipped base set, and a retrain takes seconds. `classifier.retraining`
trains the candidate and scores it and the active model (the shipped default until another is promoted) on
one validation set holding every class; the classifier's promotion rule decides. After a promotion the
pending review queue and recent unlabelled media are re-scored: calls that are no longer borderline leave
the queue and new borderline calls enter it.
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

from bot import app, review
from bot.config import Config
from storage import Store, utc_now

log = logging.getLogger(__name__)

SKIPPED, REFUSED, PROMOTED = "skipped", "refused", "promoted"
REPORTS_DIR = "reports"
# Metrics compared in the report, in the order a reader cares about them.
REPORT_METRICS = ("illustration_recall", "macro_f1", "accuracy")


@dataclass
class RetrainOutcome:
    status: str  # skipped | refused | promoted
    reason: str
    new_labels: int  # media labelled (or relabelled) since the active model was trained
    labelled: int = 0  # human-labelled media used (training + validation)
    base_images: int = 0  # shipped base-set vectors used (training + validation)
    extra_images: int = 0  # images from [retrain] base_data
    validation: dict = field(default_factory=dict)  # {"base"|"human": {label: count}}
    version: str | None = None
    previous: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    previous_scores: dict[str, float] = field(default_factory=dict)
    metrics: dict | None = None
    previous_metrics: dict | None = None
    confusion_png: str | None = None
    rescored: int = 0
    queue_added: int = 0
    queue_removed: int = 0
    train_seconds: float = 0.0  # training and scoring both models
    rescore_seconds: float = 0.0

    def deltas(self) -> dict[str, float]:
        return {
            name: self.scores[name] - self.previous_scores[name]
            for name in REPORT_METRICS
            if name in self.scores and name in self.previous_scores
        }

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
            fields.update(
                version=self.version,
                previous=self.previous or "none",
                labelled=self.labelled,
                base_images=self.base_images,
                train_s=self.train_seconds,
            )
            fields.update({f"{name}": round(value, 4) for name, value in self.scores.items()})
            fields.update({f"delta_{name}": round(value, 4) for name, value in self.deltas().items()})
            fields.update(rescored=self.rescored, queue_added=self.queue_added, queue_removed=self.queue_removed)
        fields["reason"] = self.reason
        return fields

    def report_text(self) -> str:
        """The report posted after a retrain; every metric appears once, beside the active model's value."""
        if self.status == SKIPPED:
            return f"Retrain skipped: {self.reason}."
        from classifier.evaluate import format_comparison

        verdict = "promoted to active" if self.status == PROMOTED else "kept inactive"
        lines = [
            f"Retrain: model {self.version} {verdict} ({self.reason}).",
            f"Trained on {self.labelled} human-labelled media ({self.new_labels} newly labelled), "
            f"{self.base_images} shipped base images"
            + (f" and {self.extra_images} base_data images" if self.extra_images else "")
            + f" ({self.train_seconds:.1f} s).",
        ]
        if self.validation:
            sets = "; ".join(
                f"{name}: " + ", ".join(f"{count} {label}" for label, count in counts.items())
                for name, counts in self.validation.items()
                if sum(counts.values())
            )
            lines.append(f"Validation images ({sets}):")
        if self.metrics is not None:
            lines.append(
                format_comparison(self.metrics, self.previous_metrics, self.version, self.previous or "active")
            )
        if self.status == PROMOTED:
            lines.append(
                f"Re-scored {self.rescored} media in {self.rescore_seconds:.1f} s: {self.queue_added} "
                f"entered the review queue, {self.queue_removed} left it."
            )
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
        return store.execute(
            "INSERT INTO retrain_requests (requested_by, via, requested_at) VALUES (?, ?, ?)", (by, via, utc_now())
        ).lastrowid, None


def claim_request(store: Store) -> dict | None:
    """For the runner: mark every pending request started and return the oldest, or None."""
    with store.transaction():
        pending = pending_request(store)
        if pending is not None:
            store.execute("UPDATE retrain_requests SET started_at = ? WHERE started_at IS NULL", (utc_now(),))
    return pending


def finish_request(store: Store, request_id: int, result: str) -> None:
    """For the runner: record the outcome ("promoted v7: ...", "failed: ...") of the requests it claimed."""
    store.execute(
        "UPDATE retrain_requests SET finished_at = ?, result = ? "
        "WHERE started_at IS NOT NULL AND finished_at IS NULL AND id >= ?",
        (utc_now(), result, request_id),
    )


# --- the retrain ----------------------------------------------------------------------------------------


def last_trained_label_id(store: Store) -> int | None:
    """The newest label id a retrain has already trained with (recorded by `run_retrain` on every version it
    made, promoted or refused), if known. A refused retrain is not repeated on the same labels every night."""
    if store.active_model() is None:
        return None
    return store.scalar("SELECT MAX(json_extract(data_summary, '$.last_label_id')) FROM models")


def count_new_labels(store: Store) -> int:
    """Media given a human label (not revoked) since the active model was trained; all labelled media without
    one. A media labelled twice (a correction) counts once: what a retrain gains is new labelled media."""
    active = store.active_model()
    current = "SELECT COUNT(DISTINCT media_id) FROM labels WHERE revoked_at IS NULL"
    if active is None:
        return store.scalar(current)
    last_id = last_trained_label_id(store)
    if last_id is not None:
        return store.scalar(current + " AND id > ?", (last_id,))
    if json.loads(active["data_summary"] or "{}").get("source") == "shipped":
        return store.scalar(current)  # the shipped model saw none of this owner's labels
    # A model trained outside retrain (`illustfeed train`): its creation time is the best boundary.
    return store.scalar(current + " AND at >= ?", (active["created_at"],))


def run_retrain(
    store: Store,
    config: Config,
    *,
    force: bool = False,
    model_lock: threading.Lock | None = None,
    report: Callable[[str, Path | None], None] | None = None,
) -> RetrainOutcome:
    """Train, evaluate, maybe promote and re-score; post the report. `force` ignores `min_new_labels`."""
    from classifier.versions import ensure_default_registered

    settings = config.retrain
    ensure_default_registered(store)  # the shipped default is the active model until another is promoted
    new_labels = count_new_labels(store)
    if not force and new_labels < settings.min_new_labels:
        return RetrainOutcome(
            SKIPPED,
            f"{new_labels} newly labelled media, fewer than min_new_labels {settings.min_new_labels}",
            new_labels,
        )
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
    """The classifier trains, scores both models on one validation set and promotes by its rule; then
    the queue is re-scored. Callers hold the model lock, so no classification runs in between."""
    from classifier.evaluate import save_confusion_png
    from classifier.retraining import build_candidate
    from classifier.runtime import apply_threads
    from classifier.versions import activate, promotion_scores, register_model

    started = time.monotonic()
    apply_threads(config.classifier)
    last_label_id = store.scalar("SELECT MAX(id) FROM labels") or 0
    labelled, extra = training_items(store, config)
    candidate = build_candidate(store, config, labelled + extra)
    model = candidate.model
    # Recorded in the file and on the row so "new labels since the active model" counts exactly the labels it
    # did not see, whether it is promoted or refused.
    model.data_summary["last_label_id"] = last_label_id
    register_model(store, model)
    if candidate.decision.promote:
        activate(store, model.version)
    metrics, previous_metrics = candidate.metrics, candidate.active_metrics
    outcome = RetrainOutcome(
        PROMOTED if candidate.decision.promote else REFUSED,
        candidate.decision.reason,
        new_labels,
        labelled=candidate.labelled,
        base_images=candidate.base_images,
        extra_images=len(extra),
        validation=candidate.validation,
        version=model.version,
        previous=candidate.active_version,
        scores={**promotion_scores(metrics), "accuracy": metrics["accuracy"]},
        previous_scores=(
            {**promotion_scores(previous_metrics), "accuracy": previous_metrics["accuracy"]} if previous_metrics else {}
        ),
        metrics=metrics,
        previous_metrics=previous_metrics,
        train_seconds=time.monotonic() - started,
    )
    if candidate.base_note:
        log.warning("retrain without the shipped base set: %s", candidate.base_note)
    png = store.data_dir / REPORTS_DIR / f"retrain-{model.version}-confusion.png"
    outcome.confusion_png = str(save_confusion_png(metrics, png, title=f"model {model.version} (validation)"))
    if candidate.decision.promote:
        rescore_started = time.monotonic()
        outcome.rescored, outcome.queue_added, outcome.queue_removed = rescore(store, config)
        outcome.rescore_seconds = time.monotonic() - rescore_started
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
