"""The product classifier (VGG16 trunk -> pooled features -> linear head) and its model-version file.

A model-version file holds only what training produced: the head, the feature recipe (FeatureSpec), the
labels, the calibration temperature, the backbone id, metrics and provenance. The ImageNet conv weights are
not in it; they come from `classifier.weights`. Only a fine-tuned model carries the trunk tensors it changed
(`backbone_delta`), and a model trained from scratch ("vgg16-scratch", used by tests) carries its whole trunk.
The file is a `torch.save` of plain dicts, lists, strings, numbers and tensors, read back with
`torch.load(weights_only=True)`, so opening a model file never runs code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from classifier import LABELS
from classifier.features import FeatureExtractor, FeatureSpec, aggregate_views, image_views
from classifier.policy import PolicyError, ReviewPolicy
from classifier.vgg import make_features
from classifier.weights import state_dict_sha256
from storage.files import atomic_write

MODEL_FILE_FORMAT = "illustfeed-classifier"
MODEL_FILE_FORMAT_VERSION = 1
MODEL_FILE_SUFFIX = ".pt"
# Backbone ids: where the trunk's weights come from when the file does not carry them.
IMAGENET_BACKBONE = "vgg16-imagenet"
SCRATCH_BACKBONE = "vgg16-scratch"
BACKBONES = (IMAGENET_BACKBONE, SCRATCH_BACKBONE)

# Loads the ImageNet conv weights (`features.*` state dict); classifier.weights.resolve_vgg16_features
# is the product's, tests pass their own.
TrunkWeightsLoader = Callable[[], dict[str, torch.Tensor]]


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupt, or not an illustfeed classifier file."""


class LinearHead(nn.Module):
    """Standardise the pooled feature vector, then one linear layer to the class logits."""

    def __init__(self, dim: int, num_classes: int = len(LABELS)):
        super().__init__()
        # Standardising keeps one learning rate right for features whose scales differ by orders of
        # magnitude (early vs late VGG layers, avg vs max pooling).
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_scale", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    @property
    def dim(self) -> int:
        return self.linear.in_features

    def set_standardisation(self, vectors: torch.Tensor) -> None:
        self.feature_mean.copy_(vectors.mean(0))
        self.feature_scale.copy_(vectors.std(0).clamp_min(1e-6))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.linear((vectors - self.feature_mean) / self.feature_scale)


def feature_key(
    backbone: str, backbone_width: float, backbone_delta: dict[str, torch.Tensor], spec: FeatureSpec
) -> str:
    """The cache key of the vectors a trunk (backbone, width, fine-tuned tensors) and a FeatureSpec produce."""
    spec_json = json.dumps(spec.to_dict(), sort_keys=True)
    spec_digest = hashlib.sha256(spec_json.encode()).hexdigest()[:12]
    trunk = backbone
    if backbone_delta:
        trunk += "+" + state_dict_sha256(backbone_delta)[:12]
    if backbone_width != 1.0:
        trunk += f"@w{backbone_width:g}"
    return f"{trunk}:{spec_digest}"


class ImageClassifier(nn.Module):
    """`forward(x[N,3,S,S]) -> logits[N,3]`; `features` is the VGG16 trunk with torchvision indices.

    `features` is registered before `extractor` so `named_modules()` lists the trunk as `features.N`
    (the names Grad-CAM hooks, e.g. `features.29`); both names refer to the same modules.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        head: LinearHead,
        *,
        labels: tuple[str, ...] = LABELS,
        temperature: float = 1.0,
        version: str = "untrained",
        backbone: str = IMAGENET_BACKBONE,
        backbone_width: float = 1.0,
        backbone_delta: dict[str, torch.Tensor] | None = None,
        metrics: dict[str, Any] | None = None,
        data_summary: dict[str, Any] | None = None,
        parent: str | None = None,
        policy: ReviewPolicy | None = None,
    ):
        super().__init__()
        if head.dim != extractor.dim:
            raise ValueError(f"head takes {head.dim} features but the extractor gives {extractor.dim}")
        if head.linear.out_features != len(labels):
            raise ValueError(f"head has {head.linear.out_features} outputs for labels {labels}")
        self.features = extractor.features
        self.extractor = extractor
        self.head = head
        self.labels = tuple(labels)
        self.temperature = float(temperature)
        self.version = version
        self.backbone = backbone
        self.backbone_width = float(backbone_width)
        self.backbone_delta = dict(backbone_delta or {})
        self.metrics = dict(metrics or {})
        self.data_summary = dict(data_summary or {})
        self.parent = parent
        # Feed/review thresholds fitted on held-out predictions; None: the config's borderline rule applies.
        self.policy = policy

    @property
    def spec(self) -> FeatureSpec:
        return self.extractor.spec

    @property
    def feature_key(self) -> str:
        """What `features.backbone` rows are keyed by: the trunk's weights plus the feature recipe.

        Two models with the same key produce the same vectors, so cached vectors can be reused.
        """
        return feature_key(self.backbone, self.backbone_width, self.backbone_delta, self.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(x))

    def probabilities_from_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities from pooled feature vectors [N, D] -> [N, 3]."""
        return torch.softmax(self.head(vectors) / self.temperature, dim=1)

    # The scoring rule of a whole media item, shared by batch inference and the explanations' panel:
    # each frame's views are pooled into one vector, each frame is scored, the frames are averaged.

    def frame_views(self, frame) -> torch.Tensor:
        """The views [V, 3, S, S] this model takes of one RGB frame (its FeatureSpec's framing)."""
        return image_views(frame, self.spec)

    def media_probabilities(self, frame_vectors: torch.Tensor) -> torch.Tensor:
        """One media's probabilities [3] from its frames' pooled vectors [F, D]."""
        return self.probabilities_from_vectors(frame_vectors).mean(0)

    def frame_probabilities(self, views_per_frame: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each frame's own probabilities [F, 3] from its views, run through the eager trunk (the panel of
        an animated overlay shows them frame by frame)."""
        with torch.inference_mode():
            return self.probabilities_from_vectors(
                torch.stack([aggregate_views(self.extractor(views)) for views in views_per_frame])
            )

    def probabilities_of_views(self, views_per_frame) -> list[float]:
        """One media's probabilities from its frames' views, run through the eager trunk."""
        return self.frame_probabilities(views_per_frame).mean(0).tolist()


def new_classifier(
    trunk: nn.Sequential, spec: FeatureSpec, *, backbone: str = IMAGENET_BACKBONE, backbone_width: float = 1.0
) -> ImageClassifier:
    """An untrained head on `trunk`; training fills in head, temperature, version and metrics."""
    extractor = FeatureExtractor(trunk, spec)
    return ImageClassifier(extractor, LinearHead(extractor.dim), backbone=backbone, backbone_width=backbone_width)


@dataclass
class ModelRecord:
    """The contents of a model-version file, before a trunk is attached."""

    version: str
    backbone: str
    backbone_width: float
    feature_spec: FeatureSpec
    labels: tuple[str, ...]
    temperature: float
    head_state: dict[str, torch.Tensor]
    backbone_delta: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_summary: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    policy: ReviewPolicy | None = None

    @property
    def feature_key(self) -> str:
        """The key of the vectors this model's head reads, known without loading any trunk weights."""
        return feature_key(self.backbone, self.backbone_width, self.backbone_delta, self.feature_spec)


def save_model(model: ImageClassifier, path: str | Path) -> Path:
    """Write `model` as a model-version file atomically (temp file, fsync, rename) and return the path."""
    path = Path(path)
    payload = {
        "format": MODEL_FILE_FORMAT,
        "format_version": MODEL_FILE_FORMAT_VERSION,
        "version": model.version,
        "backbone": model.backbone,
        "backbone_width": model.backbone_width,
        "feature_spec": model.spec.to_dict(),
        "labels": list(model.labels),
        "temperature": model.temperature,
        "head": {name: tensor.detach().cpu().clone() for name, tensor in model.head.state_dict().items()},
        "backbone_delta": {name: t.detach().cpu().clone() for name, t in model.backbone_delta.items()},
        # JSON round trip: metrics must stay plain data so weights_only loading accepts them.
        "metrics": json.loads(json.dumps(model.metrics)),
        "data_summary": json.loads(json.dumps(model.data_summary)),
        "parent": model.parent,
        "policy": model.policy.to_dict() if model.policy is not None else None,
    }
    atomic_write(path, lambda stream: torch.save(payload, stream))
    return path


def _require(payload: dict, key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in payload:
        raise ModelFileError(f"model file {path} has no {key!r} entry")
    value = payload[key]
    if not isinstance(value, kind):
        raise ModelFileError(f"model file {path}: {key!r} is a {type(value).__name__}, expected {kind}")
    return value


def read_model_file(path: str | Path) -> ModelRecord:
    """Read and validate a model-version file; any problem is a ModelFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a damaged zip/pickle
        raise ModelFileError(f"model file {path} is corrupt or truncated ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise ModelFileError(f"model file {path} is not an {MODEL_FILE_FORMAT} file")
    format_version = payload.get("format_version")
    if format_version != MODEL_FILE_FORMAT_VERSION:
        raise ModelFileError(
            f"model file {path} has format version {format_version}; this code reads {MODEL_FILE_FORMAT_VERSION}"
        )
    backbone = _require(payload, "backbone", str, path)
    if backbone not in BACKBONES:
        raise ModelFileError(f"model file {path} names unknown backbone {backbone!r} (known: {BACKBONES})")
    try:
        spec = FeatureSpec.from_dict(_require(payload, "feature_spec", dict, path))
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFileError(f"model file {path} has an invalid feature_spec: {error}") from error
    head_state = _require(payload, "head", dict, path)
    backbone_delta = _require(payload, "backbone_delta", dict, path)
    for name, tensor in list(head_state.items()) + list(backbone_delta.items()):
        if not isinstance(tensor, torch.Tensor):
            raise ModelFileError(f"model file {path}: {name!r} is not a tensor")
    temperature = float(_require(payload, "temperature", (int, float), path))
    policy = None
    if payload.get("policy") is not None:  # files written before the review policy have none
        try:
            policy = ReviewPolicy.from_dict(payload["policy"])
        except (PolicyError, AttributeError) as error:
            raise ModelFileError(f"model file {path} has an invalid review policy: {error}") from None
    if not temperature > 0:
        raise ModelFileError(f"model file {path} has temperature {temperature}; it must be > 0")
    return ModelRecord(
        version=_require(payload, "version", str, path),
        backbone=backbone,
        backbone_width=float(_require(payload, "backbone_width", (int, float), path)),
        feature_spec=spec,
        labels=_checked_labels(_require(payload, "labels", list, path), path),
        temperature=temperature,
        head_state=head_state,
        backbone_delta=backbone_delta,
        metrics=_require(payload, "metrics", dict, path),
        data_summary=_require(payload, "data_summary", dict, path),
        parent=payload.get("parent"),
        policy=policy,
    )


def _checked_labels(labels: list, path: Path) -> tuple[str, ...]:
    # The store, the feed and the review buttons all speak these three names, in this order.
    if tuple(labels) != LABELS:
        raise ModelFileError(f"model file {path} has labels {labels}; expected {list(LABELS)}")
    return tuple(labels)


def check_head_fits(record: ModelRecord, source: str | Path) -> None:
    """The head's shapes match the features its FeatureSpec produces (no backbone weights needed)."""
    extractor = FeatureExtractor(make_features(record.backbone_width), record.feature_spec)
    try:
        _loaded_head(LinearHead(extractor.dim, len(record.labels)), record.head_state)
    except (RuntimeError, ValueError) as error:
        raise ModelFileError(f"model file {source}: its head does not fit its features: {error}") from None


def build_from_record(
    record: ModelRecord, trunk_weights: TrunkWeightsLoader | None, *, source: str | Path = "<record>"
) -> ImageClassifier:
    """Attach a trunk to a model record: ImageNet weights from `trunk_weights`, then the file's delta."""
    trunk = make_features(record.backbone_width)
    # Weights and deltas are named as in the whole model (`features.N.weight`); the trunk alone says `N.weight`.
    trunk_state = {f"features.{name}": tensor for name, tensor in trunk.state_dict().items()}
    if record.backbone == IMAGENET_BACKBONE:
        if record.backbone_width != 1.0:
            raise ModelFileError(f"model file {source}: ImageNet weights exist only at width 1.0")
        if trunk_weights is None:
            raise ModelFileError(f"model file {source} needs the ImageNet VGG16 weights; none were given")
        trunk_state.update(trunk_weights())
    else:
        missing = sorted(set(trunk_state) - set(record.backbone_delta))
        if missing:
            raise ModelFileError(f"model file {source}: backbone {record.backbone} lacks trunk tensors {missing[:4]}")
    trunk_state.update(record.backbone_delta)
    try:
        trunk.load_state_dict({name.removeprefix("features."): t for name, t in trunk_state.items()}, strict=True)
        model = new_classifier(
            trunk, record.feature_spec, backbone=record.backbone, backbone_width=record.backbone_width
        )
        model.head = _loaded_head(model.head, record.head_state)
    except (RuntimeError, ValueError) as error:
        raise ModelFileError(f"model file {source} does not fit its backbone: {error}") from error
    model.labels = record.labels
    model.temperature = record.temperature
    model.version = record.version
    model.backbone_delta = dict(record.backbone_delta)
    model.metrics = dict(record.metrics)
    model.data_summary = dict(record.data_summary)
    model.parent = record.parent
    model.policy = record.policy
    return model.eval()


def head_from_record(record: ModelRecord) -> LinearHead:
    """The record's head alone, to score cached vectors without building (or loading) a trunk."""
    weight = record.head_state.get("linear.weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ModelFileError(f"model {record.version} has no [classes, features] head weight")
    try:
        return _loaded_head(LinearHead(weight.shape[1], weight.shape[0]), record.head_state).eval()
    except (RuntimeError, ValueError) as error:
        raise ModelFileError(f"model {record.version}: its head does not load: {error}") from None


def _loaded_head(head: LinearHead, head_state: dict[str, torch.Tensor]) -> LinearHead:
    head.load_state_dict(head_state, strict=True)
    return head


def load_model(path: str | Path, trunk_weights: TrunkWeightsLoader | None) -> ImageClassifier:
    """Read a model-version file and build the ready-to-run classifier (eval mode)."""
    return build_from_record(read_model_file(path), trunk_weights, source=path)
