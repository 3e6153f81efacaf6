"""Wiring the classifier to a config and a store: weights, model loading, runners, train-and-register."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from classifier.cache import StoreVectorCache
from classifier.data import LabelledImage
from classifier.evaluate import compute_metrics
from classifier.features import FeatureSpec
from classifier.inference import FeatureRunner
from classifier.model import ImageClassifier, ModelFileError, load_model, new_classifier
from classifier.train import TrainOptions, TrainResult, feature_vectors, train_model
from classifier.versions import (
    activate,
    compare_for_promotion,
    default_model_file,
    ensure_default_registered,
    register_model,
    resolve_model_path,
)
from classifier.vgg import make_features
from classifier.weights import resolve_vgg16_features

log = logging.getLogger(__name__)


def trunk_weights_loader(classifier_config, data_dir: Path):
    """The weights chain as `build_from_record` wants it: called only when a model needs ImageNet weights."""

    def load() -> dict[str, torch.Tensor]:
        resolved = resolve_vgg16_features(
            classifier_config.weights_path or None, data_dir, allow_download=classifier_config.weights_download
        )
        log.info("VGG16 ImageNet weights from %s (%s)", resolved.path, resolved.origin)
        return resolved.state

    return load


def apply_threads(classifier_config) -> None:
    if classifier_config.threads > 0:
        torch.set_num_threads(classifier_config.threads)


def load_classifier(store, config, version_or_path: str | None = None) -> ImageClassifier:
    """--model VERSION_OR_PATH, else the active model, else the shipped default model."""
    path = resolve_model_path(store, version_or_path)
    return load_model(path, trunk_weights_loader(config.classifier, config.data_path))


# Where `precision = "auto"` remembers its measured choice, per machine and model (inside the data dir).
PRECISION_CHOICE_FILE = "precision.json"


def make_runner(model: ImageClassifier, classifier_config, data_path: Path | None = None) -> FeatureRunner:
    apply_threads(classifier_config)
    choice_file = Path(data_path) / PRECISION_CHOICE_FILE if data_path is not None else None
    return FeatureRunner(model, precision=classifier_config.precision, choice_file=choice_file)


def base_model(store, config) -> ImageClassifier:
    """What a new model is trained on: the active model's trunk and feature recipe, else the shipped
    default's, else ImageNet VGG16 with the default FeatureSpec."""
    try:
        return load_classifier(store, config)
    except ModelFileError as error:
        try:
            default_model_file()
        except ModelFileError:
            log.info("no active or default model (%s); starting from ImageNet VGG16", error)
        else:
            raise  # a model exists but is damaged: say so rather than silently train from scratch
    trunk = make_features(1.0)
    trunk.load_state_dict(
        {
            name.removeprefix("features."): tensor
            for name, tensor in trunk_weights_loader(config.classifier, config.data_path)().items()
        }
    )
    return new_classifier(trunk, FeatureSpec())


def score_on(
    model: ImageClassifier,
    items: Sequence[LabelledImage],
    vectors: torch.Tensor | None,
    vectors_key: str | None,
    runner_factory,
) -> dict:
    """Metrics of `model` on `items`, reusing `vectors` when they come from the same trunk and recipe."""
    if vectors is None or vectors_key != model.feature_key:
        items, vectors = feature_vectors(model, items, runner=runner_factory(model))
    with torch.inference_mode():
        predicted = model.head(vectors).argmax(1).tolist()
    return compute_metrics([item.label for item in items], [model.labels[p] for p in predicted], model.labels)


def train_and_register(
    store,
    config,
    items: Sequence[LabelledImage],
    options: TrainOptions,
    *,
    source: str,
    base: ImageClassifier | None = None,
    problems: Sequence[str] = (),
) -> dict:
    """Train on `items`, save and register the version, and activate it unless it is worse than the active
    model on the same validation images. Returns a report (version, path, metrics, promotion)."""
    ensure_default_registered(store)
    base = base or base_model(store, config)
    active_row = store.query_one("SELECT * FROM models WHERE active = 1")
    cache = StoreVectorCache(store, base.feature_key) if _keys_are_media_ids(items) else None
    runner = make_runner(base, config.classifier, config.data_path)
    result: TrainResult = train_model(
        base,
        items,
        options,
        runner=runner,
        cache=cache,
        parent=active_row["version"] if active_row else None,
        source=source,
        problems=problems,
    )
    active_metrics = None
    if active_row is not None:
        active_model = load_model(active_row["path"], trunk_weights_loader(config.classifier, config.data_path))
        active_metrics = score_on(
            active_model,
            result.validation_items,
            result.validation_vectors,
            base.feature_key,
            lambda m: make_runner(m, config.classifier, config.data_path),
        )
    decision = compare_for_promotion(result.model.metrics, active_metrics)
    path = register_model(store, result.model)
    if decision.promote:
        activate(store, result.model.version)
    return {
        "version": result.model.version,
        "path": str(path),
        "activated": decision.promote,
        "promotion": decision.reason,
        "metrics": result.model.metrics,
        "active_metrics_on_same_split": active_metrics,
        "data_summary": result.model.data_summary,
        "epochs": len(result.history),
    }


def _keys_are_media_ids(items: Sequence[LabelledImage]) -> bool:
    return all(isinstance(item.key, int) for item in items)
