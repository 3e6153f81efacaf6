"""Model versions: files under `<data_dir>/models/`, `models` rows, promotion, activation and rollback.

A new model becomes active only if its illustration recall and macro-F1 on the fixed validation split are
not worse than the active model's on the same images. Rollback re-activates the active model's parent
(the model that was active when it was trained and that it replaced).

The shipped default model is a version like any other: the first time a data folder's versions are
looked at, its file is copied to `<data_dir>/models/` and registered, active when no other model is. The
copy (56 KB) keeps every version the folder has used reachable: after an upgrade ships `default-3`, a model
trained from `default-2` can still be rolled back to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from classifier.model import (
    MODEL_FILE_SUFFIX,
    ImageClassifier,
    ModelFileError,
    ModelRecord,
    check_head_fits,
    read_model_file,
    save_model,
)
from classifier import SHIPPED_MODEL_DIR
from storage.files import atomic_write_bytes

MODELS_DIR = "models"
# The shipped model (issue 4 trains it): used when no model is active.
DEFAULT_MODEL_DIR = SHIPPED_MODEL_DIR
# Metrics compared for promotion, most important first.
PROMOTION_METRICS = ("illustration_recall", "macro_f1")
METRIC_TITLES = {"illustration_recall": "illustration recall", "macro_f1": "macro-F1"}


class ModelVersionError(ValueError):
    """A model version does not exist, cannot be activated, or there is nothing to roll back to."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def promotion_scores(metrics: dict) -> dict[str, float]:
    return {
        "illustration_recall": float(metrics["per_class"]["illustration"]["recall"]),
        "macro_f1": float(metrics["macro_f1"]),
    }


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def compare_for_promotion(candidate: dict, active: dict | None, tolerance: float = 1e-9) -> PromotionDecision:
    """Promote unless illustration recall or macro-F1 is lower than the active model's (same images).
    The reason names the metrics; the report shows their values."""
    if active is None:
        return PromotionDecision(True, "no active model")
    new, old = promotion_scores(candidate), promotion_scores(active)
    worse = [METRIC_TITLES[name] for name in PROMOTION_METRICS if new[name] < old[name] - tolerance]
    if worse:
        return PromotionDecision(False, "worse than the active model on " + " and ".join(worse))
    return PromotionDecision(
        True, " and ".join(METRIC_TITLES[name] for name in PROMOTION_METRICS) + " not below the active model's"
    )


def model_path(data_dir: Path, version: str) -> Path:
    return Path(data_dir) / MODELS_DIR / f"{version}{MODEL_FILE_SUFFIX}"


def ensure_default_registered(store, directory: Path | None = None) -> str | None:
    """Register the shipped default model in this store if it is not yet (active when no model is);
    returns its version, or None when no default model ships (the caller's model lookup says so) or the store
    is read-only (lookups then fall back to the shipped file itself)."""
    if getattr(store, "read_only", False):
        return None
    try:
        shipped = default_model_file(directory or DEFAULT_MODEL_DIR)
    except ModelFileError:
        return None
    record = _shipped_record(shipped)
    if store.query_one("SELECT version FROM models WHERE version = ?", (record.version,)):
        return record.version
    path = model_path(store.data_dir, record.version)
    atomic_write_bytes(path, shipped.read_bytes())
    with store.transaction():
        # OR IGNORE: another process may have registered it since the check above.
        store.execute(
            "INSERT OR IGNORE INTO models (version, path, backbone, metrics, data_summary, parent, active, created_at)"
            " VALUES (?, ?, ?, ?, ?, NULL, NOT EXISTS (SELECT 1 FROM models WHERE active = 1), ?)",
            (
                record.version,
                str(path),
                record.backbone,
                json.dumps(record.metrics),
                json.dumps({**record.data_summary, "source": "shipped"}),
                utc_now(),
            ),
        )
    return record.version


_shipped_records: dict[tuple[Path, int, int], ModelRecord] = {}


def _shipped_record(path: Path) -> ModelRecord:
    """The shipped file's record, read once per file state (every model lookup passes here)."""
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _shipped_records:
        _shipped_records[key] = read_model_file(path)
    return _shipped_records[key]


def register_model(store, model: ImageClassifier) -> Path:
    """Save the model file under `<data_dir>/models/` and add its (inactive) `models` row."""
    if store.query_one("SELECT version FROM models WHERE version = ?", (model.version,)):
        raise ModelVersionError(f"model version {model.version} already exists")
    path = save_model(model, model_path(store.data_dir, model.version))
    with store.transaction():
        store.execute(
            "INSERT INTO models (version, path, backbone, metrics, data_summary, parent, active, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            (
                model.version,
                str(path),
                model.feature_key,
                json.dumps(model.metrics),
                json.dumps(model.data_summary),
                model.parent,
                utc_now(),
            ),
        )
    return path


def get_model_row(store, version: str) -> dict:
    row = store.query_one("SELECT * FROM models WHERE version = ?", (version,))
    if row is None:
        known = [r["version"] for r in store.query("SELECT version FROM models ORDER BY created_at")]
        raise ModelVersionError(f"no model version {version!r} (known: {', '.join(known) or 'none'})")
    return row


def list_models(store) -> list[dict]:
    ensure_default_registered(store)
    rows = store.query("SELECT * FROM models ORDER BY created_at, version")
    for row in rows:
        row["metrics"] = json.loads(row["metrics"]) if row["metrics"] else {}
        row["data_summary"] = json.loads(row["data_summary"]) if row["data_summary"] else {}
    return rows


def activate(store, version: str) -> dict:
    """Make `version` the only active model. Its file must read cleanly first, else nothing changes."""
    ensure_default_registered(store)
    row = get_model_row(store, version)
    # Raises ModelFileError naming the file, and the active model stays: unreadable, wrong labels, or a head
    # that does not fit its features.
    check_head_fits(read_model_file(row["path"]), row["path"])
    with store.transaction():
        store.execute("UPDATE models SET active = 0 WHERE active = 1 AND version != ?", (version,))
        store.execute("UPDATE models SET active = 1 WHERE version = ?", (version,))
    return get_model_row(store, version)


def rollback(store) -> dict:
    """Re-activate the active model's parent."""
    ensure_default_registered(store)
    active = store.query_one("SELECT * FROM models WHERE active = 1")
    if active is None:
        raise ModelVersionError("no model is active, nothing to roll back")
    if not active["parent"]:
        raise ModelVersionError(f"active model {active['version']} has no parent to roll back to")
    return activate(store, active["parent"])


def active_model_path(store) -> Path | None:
    ensure_default_registered(store)
    row = store.query_one("SELECT path FROM models WHERE active = 1")
    return Path(row["path"]) if row else None


def resolve_model_path(store, version_or_path: str | None) -> Path:
    """An explicit version or file, else the active model's file, else the shipped default model."""
    if version_or_path:
        candidate = Path(version_or_path)
        if candidate.suffix == MODEL_FILE_SUFFIX or candidate.exists():
            if not candidate.is_file():
                raise ModelFileError(f"model file {candidate} does not exist")
            return candidate
        if store is None:
            return candidate
        ensure_default_registered(store)
        return Path(get_model_row(store, version_or_path)["path"])
    active = active_model_path(store) if store is not None else None
    if active is not None:
        return active
    return default_model_file()


def default_model_file(directory: Path | None = None) -> Path:
    """The shipped model: `model.pt` in `directory` (default DEFAULT_MODEL_DIR), or its only `*.pt` file."""
    directory = directory or DEFAULT_MODEL_DIR
    files = sorted(directory.glob(f"*{MODEL_FILE_SUFFIX}")) if directory.is_dir() else []
    preferred = directory / f"model{MODEL_FILE_SUFFIX}"
    if preferred in files:
        return preferred
    if len(files) == 1:
        return files[0]
    found = f"{len(files)} model files" if files else "no model file"
    raise ModelFileError(
        f"no model is active and the shipped default model directory {directory} has {found} "
        f"(expected model{MODEL_FILE_SUFFIX}); train one with `illustfeed train --data DIR` "
        "or pass --model VERSION_OR_PATH"
    )
