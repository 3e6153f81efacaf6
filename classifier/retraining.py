"""A retrain's candidate model: the shipped base vectors plus the owner's labels, judged against the active model
on one validation set that holds every class.

Training set: the training part of the base set (`classifier.base_set`: what the shipped model learnt from)
and the training side of the human labels, each human label weighing HUMAN_LABEL_WEIGHT base images, so a
few dozen labels adjust the shipped model's knowledge instead of replacing it. The head is fitted with the
shipped model's own recipe (full-batch L-BFGS, origin-balanced weights), so nothing but the labels and the
held-out origins tells the candidate from the shipped model.

Validation set: the base set's held-out origins plus the held-out human labels. The active model is scored
on the same images, never on ones it was trained on: on base images through the shipped model's held-out
probabilities when it is the model the base set was made for, through its held-out twin when a retrain
refitted it on them, through its own head otherwise. The head that ships is the validated recipe refitted
with the base set's held-out origins. Only heads are trained, on cached vectors; the VGG16 trunk is loaded
only for labelled media whose vectors are not cached yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from classifier import LABELS
from classifier.base_set import BASE_SET_FILE, BaseSet, BaseSetError, load_base_set
from classifier.cache import StoreVectorCache
from classifier.data import VALIDATION_FRACTION, DatasetError, LabelledImage, split_by_group, summarise
from classifier.evaluate import compute_metrics
from classifier.features import FeatureExtractor
from classifier.model import (
    ImageClassifier,
    LinearHead,
    ModelRecord,
    head_from_record,
    read_model_file,
)
from classifier.train import (
    feature_vectors,
    fit_linear_head,
    fit_review_policy,
    fit_temperature,
    new_version,
    origin_weights,
)
from classifier.versions import (
    DEFAULT_MODEL_DIR,
    PromotionDecision,
    compare_for_promotion,
    ensure_default_registered,
)
from classifier.vgg import make_features

log = logging.getLogger(__name__)

# One human label counts as this many base-set images: the owner's labels describe the accounts they
# follow, the base set only what the shipped model was trained on.
HUMAN_LABEL_WEIGHT = 5.0
# Below this many validation images of a class, its recall is noise: the candidate is not promoted.
MIN_VALIDATION_PER_CLASS = 5
# The shipped model's head recipe (classifier/default_model/MODEL_CARD.md), so a candidate trained on the base
# set alone is the shipped model minus the held-out origins: classes weigh equally, each origin's images share
# weight ~ sqrt(count), illustrations x5, L2 1e-2 on the conv columns and none on the pixel statistics.
ILLUSTRATION_BOOST = 5.0
HEAD_L2 = 1e-2
DEFAULT_BASE_SET = DEFAULT_MODEL_DIR / BASE_SET_FILE


@dataclass
class Candidate:
    """A trained, unsaved candidate and how it compares with the active model on the same images."""

    model: ImageClassifier  # shape-only trunk: save it, then load the file to run it
    metrics: dict
    active_metrics: dict | None
    active_version: str | None
    decision: PromotionDecision
    labelled: int  # human-labelled media used (training + validation), not counting [retrain] base_data
    base_images: int  # base-set vectors used (training + validation)
    base_note: str  # why the base set was left out, "" when it was used
    validation: dict[str, dict[str, int]] = field(default_factory=dict)  # {"base"|"human": per label}


def shape_only_trunk(width: float) -> nn.Sequential:
    """VGG16's conv layers on the meta device: the shapes a head and a FeatureSpec need, no weights or memory.
    A model file stores only the head (and fine-tuned tensors), so a candidate never needs the real trunk."""
    with torch.device("meta"):
        return make_features(width)


def build_candidate(
    store,
    config,
    labelled: Sequence[LabelledImage],
    *,
    validation_fraction: float = VALIDATION_FRACTION,
    base_set_path: Path | None = DEFAULT_BASE_SET,
    source: str = "retrain",
) -> Candidate:
    """Train a head on base vectors + human labels from the active model's features, score it and the active
    model on one validation set, and decide promotion (nothing is saved)."""
    from classifier.runtime import base_model, trunk_weights_loader

    ensure_default_registered(store)
    active_row = store.query_one("SELECT * FROM models WHERE active = 1")
    record: ModelRecord | None = read_model_file(active_row["path"]) if active_row else None
    full_model: ImageClassifier | None = None
    if record is None:
        # No model at all (no shipped default either): ImageNet VGG16 with the default FeatureSpec.
        full_model = base_model(store, config)
    key = record.feature_key if record else full_model.feature_key

    def trunk_model() -> ImageClassifier:
        nonlocal full_model
        if full_model is None:
            from classifier.model import build_from_record

            full_model = build_from_record(
                record, trunk_weights_loader(config.classifier, config.data_path), source=active_row["path"]
            )
        return full_model

    human, human_x = _human_vectors(store, config, labelled, key, trunk_model)
    base, base_note = _usable_base_set(base_set_path, key)
    human_train, human_val = split_by_group(human, validation_fraction)
    position = {item.key: index for index, item in enumerate(human)}
    h_train = [position[item.key] for item in human_train]
    h_val = [position[item.key] for item in human_val]
    b_train, b_val = base.split() if base is not None else ([], [])

    labels = LABELS
    spec = record.feature_spec if record else full_model.spec
    human_vector = dict(zip((item.key for item in human), human_x)) if human else {}

    def fit(base_rows: list[int], human_rows: list[LabelledImage], start: LinearHead | None = None) -> LinearHead:
        return _fit_head(base, base_rows, human_rows, human_vector, len(spec.stats), start)

    if not (b_train or human_train) or not (b_val or h_val):
        raise DatasetError(
            f"cannot retrain: the training or validation split is empty: {len(h_train)} human labels "
            f"and {len(b_train)} base images to train on, {len(h_val) + len(b_val)} to validate on "
            f"({len(human)} labelled media in {len({i.group for i in human})} accounts"
            f"{'; ' + base_note if base_note else ''})"
        )
    val_x = torch.cat(([base.vectors[b_val]] if b_val else []) + ([human_x[h_val]] if h_val else []))
    val_y = torch.tensor(
        [labels.index(base.labels[i]) for i in b_val] + [labels.index(human[i].label) for i in h_val], dtype=torch.long
    )
    # The candidate as validated: trained without any validation image.
    held_out_head = fit(b_train, human_train)
    with torch.no_grad():
        val_logits = held_out_head(val_x)
    temperature = fit_temperature(val_logits, val_y)
    truth = [labels[t] for t in val_y.tolist()]
    metrics = compute_metrics(truth, [labels[p] for p in val_logits.argmax(1).tolist()], labels)
    validation = {
        "base": _per_label([base.labels[i] for i in b_val]) if base is not None else _per_label([]),
        "human": _per_label([human[i].label for i in h_val]),
    }
    metrics.update(
        temperature=temperature,
        validation_sets=validation,
        validation_nll=float(nn.functional.cross_entropy(val_logits / temperature, val_y)),
    )

    active_metrics = None
    if active_row is not None:
        twin = _held_out_twin(
            store, record, base, b_train, human_train, lambda rows, seen: fit(rows, seen, held_out_head)
        )
        active_probabilities = _active_probabilities(record, val_x, base, b_val, twin)
        active_metrics = compute_metrics(truth, [labels[p] for p in active_probabilities.argmax(1).tolist()], labels)
    short = {
        label: count
        for label, count in zip(labels, [truth.count(label) for label in labels])
        if count < MIN_VALIDATION_PER_CLASS
    }
    if short:
        counts = ", ".join(f"{count} {label}" for label, count in short.items())
        decision = PromotionDecision(
            False,
            f"too few validation images of a class ({counts}; "
            f"{MIN_VALIDATION_PER_CLASS} of each needed): keeping the active model",
        )
    else:
        decision = compare_for_promotion(metrics, active_metrics)

    # What ships: the validated recipe refitted with the base set's validation origins too, as the shipped
    # model was (without them, images like those origins' lose the feed: 2 of 14 illustrations in the new-user
    # test). Held-out labels stay out, so the next retrain can still compare on them.
    if not decision.promote:
        head = held_out_head  # registered for the record only; never active
    else:
        head = fit(b_train + b_val, human_train, start=held_out_head) if b_val else held_out_head
    shipped_rows = b_train + b_val if head is not held_out_head else b_train
    trunk_source = record if record is not None else full_model
    model = ImageClassifier(
        FeatureExtractor(shape_only_trunk(trunk_source.backbone_width), spec),
        head,
        labels=labels,
        temperature=temperature,
        backbone=trunk_source.backbone,
        backbone_width=trunk_source.backbone_width,
        backbone_delta=trunk_source.backbone_delta,
        metrics=metrics,
        parent=active_row["version"] if active_row else None,
    )
    model.data_summary = {
        "source": source,
        "mode": "head",
        "recipe": {
            "fit": "lbfgs",
            "weighting": "class_origin",
            "illustration_boost": ILLUSTRATION_BOOST,
            "l2": HEAD_L2,
        },
        "human_label_weight": HUMAN_LABEL_WEIGHT,
        "train": {
            "human": summarise(human_train) if human_train else {"images": 0},
            "base": {"images": len(shipped_rows), "per_label": _per_label([base.labels[i] for i in shipped_rows])}
            if base is not None
            else {"images": 0},
        },
        "validation": validation,
        "base_set": {
            "model_version": base.model_version,
            "images": len(base),
            "refit_on_validation": head is not held_out_head,
        }
        if base is not None
        else {"unused": base_note},
    }
    # The review policy is refitted on the validation predictions, with the owner's targets, as training
    # fits it: a retrained model keeps deciding by feed targets, not by the old borderline rule.
    metrics["feed"] = fit_review_policy(model, val_logits, truth, config.classifier.policy_targets())
    model.version = new_version(model)
    return Candidate(
        model,
        metrics,
        active_metrics,
        active_row["version"] if active_row else None,
        decision,
        labelled=sum(isinstance(item.key, int) for item in human),
        base_images=len(b_train) + len(b_val),
        base_note=base_note,
        validation=validation,
    )


def _fit_head(
    base: BaseSet | None,
    base_rows: list[int],
    human_rows: Sequence[LabelledImage],
    human_vector: dict,
    tail_columns: int,
    start: LinearHead | None,
) -> LinearHead:
    """The shipped recipe on base rows + human labels (each weighing HUMAN_LABEL_WEIGHT base images)."""
    x = torch.cat(
        ([base.vectors[base_rows]] if base_rows else [])
        + ([torch.stack([human_vector[item.key] for item in human_rows])] if human_rows else [])
    )
    y = torch.tensor(
        [LABELS.index(base.labels[i]) for i in base_rows] + [LABELS.index(item.label) for item in human_rows],
        dtype=torch.long,
    )
    groups = [base.groups[i] for i in base_rows] + [item.group for item in human_rows]
    weights = origin_weights(y, groups, "class_origin", ILLUSTRATION_BOOST, len(LABELS))
    weights[len(base_rows) :] *= HUMAN_LABEL_WEIGHT
    return fit_linear_head(
        x,
        y,
        weights / weights.mean(),
        l2=HEAD_L2,
        tail_columns=tail_columns,
        tail_l2=0.0,
        classes=len(LABELS),
        start=start,
    )


def _held_out_twin(
    store, record: ModelRecord, base: BaseSet | None, b_train: list[int], human_train: Sequence[LabelledImage], fit
) -> LinearHead | None:
    """For an active model a retrain refitted on the base set's validation origins: the same recipe on the
    same data without them (the recipe is deterministic), so it is judged there on unseen images."""
    trained_with = record.data_summary.get("base_set", {})
    if (
        base is None
        or not trained_with.get("refit_on_validation")
        or trained_with.get("model_version") != base.model_version
    ):
        return None
    last_label_id = record.data_summary.get("last_label_id") or 0
    newest = {
        row["media_id"]: row["newest"]
        for row in store.query(
            "SELECT media_id, MAX(id) AS newest FROM labels WHERE revoked_at IS NULL GROUP BY media_id"
        )
    }
    # The labels it was trained on: those not changed since (a later correction is not what it saw).
    seen = [item for item in human_train if newest.get(item.key, last_label_id + 1) <= last_label_id]
    return fit(b_train, seen)


def _per_label(labels: Sequence[str]) -> dict[str, int]:
    return {label: list(labels).count(label) for label in LABELS}


def _human_vectors(
    store, config, labelled: Sequence[LabelledImage], key: str, trunk_model
) -> tuple[list[LabelledImage], torch.Tensor]:
    """Cached vectors of the labelled media; the trunk runs (and caches) only the missing ones."""
    from classifier.runtime import make_runner

    dim_unknown = torch.empty(0, 0)
    if not labelled:
        return [], dim_unknown
    cache = StoreVectorCache(store, key)
    # Media ids have cached vectors; images of [retrain] base_data (keyed by path) are computed each time.
    known = cache.get([item.key for item in labelled if isinstance(item.key, int)])
    missing = [item for item in labelled if item.key not in known]
    if missing:
        model = trunk_model()
        runner = make_runner(model, config.classifier, config.data_path)
        for cacheable in (True, False):
            part = [item for item in missing if isinstance(item.key, int) == cacheable]
            try:
                kept, vectors = feature_vectors(model, part, runner=runner, cache=cache if cacheable else None)
            except DatasetError:  # none of them decodes: left out like any undecodable image
                continue
            known.update({item.key: vector for item, vector in zip(kept, vectors)})
        for item in missing:
            if item.key not in known:
                log.warning("retrain: labelled media %s cannot be decoded; left out", item.key)
    kept = [item for item in labelled if item.key in known]
    if not kept:
        return [], dim_unknown
    return kept, torch.stack([known[item.key] for item in kept])


def _usable_base_set(path: Path | None, key: str) -> tuple[BaseSet | None, str]:
    """The shipped base set when its vectors fit the active model's features, else (None, why not)."""
    if path is None:
        return None, "no base set configured"
    if not Path(path).is_file():
        return None, f"no base vector file at {path}"
    try:
        base = load_base_set(path)
    except BaseSetError as error:
        log.warning("retrain without the base set: %s", error)
        return None, str(error)
    if base.feature_key != key:
        return None, (
            f"the base vectors ({base.feature_key}) do not fit the active model's features ({key}); "
            "trained on human labels alone"
        )
    return base, ""


def _active_probabilities(
    record: ModelRecord | None, val_x: torch.Tensor, base: BaseSet | None, base_rows: list[int], twin: LinearHead | None
) -> torch.Tensor:
    """The active model's probabilities on the validation vectors (base rows first, then human ones): on base
    rows the shipped model's held-out probabilities, or its retrained twin's, when it was trained on them."""
    head: LinearHead = head_from_record(record)
    with torch.no_grad():
        probabilities = torch.softmax(head(val_x) / record.temperature, dim=1)
        if base is not None and base_rows:
            if record.version == base.model_version:
                probabilities[: len(base_rows)] = base.shipped_probabilities[base_rows]
            elif twin is not None:
                probabilities[: len(base_rows)] = torch.softmax(twin(val_x[: len(base_rows)]) / record.temperature, 1)
    return probabilities
