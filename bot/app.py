"""The composition root: the one place that wires the classifier, the explanations and the store to the config.

Everything that needs "the model" asks here: the runner's jobs and the retrain (`ActiveModel`), the CLI
(`load_model`, `classify`), the chat's fresh explanations (`ActiveModelExplainer`). The classify settings
are unpacked once (`classify`), and the explanation wiring (Grad-CAM overlay for borderline calls, the
explainer for `/why`) lives nowhere else. torch is imported inside the functions: every CLI command imports
this module and most of them never load a model.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from bot.config import ClassifierConfig, Config
from storage import Store

if TYPE_CHECKING:
    from bot.classify import ClassifySummary, OverlayRenderer
    from classifier.inference import FeatureRunner
    from classifier.model import ImageClassifier


def load_model(store: Store, config: Config, version_or_path: str | None = None) -> ImageClassifier:
    """A model version or file, else the active model, else the shipped default; weights from the chain."""
    from classifier.runtime import load_classifier

    return load_classifier(store, config, version_or_path)


def make_runner(model: ImageClassifier, settings: ClassifierConfig, data_path: Path | None = None) -> FeatureRunner:
    """The CPU-tuned feature runner for `model` at the configured precision and thread count; with the data dir,
    `precision = "auto"` remembers there what it measured."""
    from classifier.runtime import make_runner as classifier_runner

    return classifier_runner(model, settings, data_path)


def overlay_renderer(settings: ClassifierConfig) -> OverlayRenderer | None:
    """The Grad-CAM overlay stored for borderline calls, or None when `[classifier] overlays` is off."""
    if not settings.overlays:
        return None
    from classifier.preprocess import load_rgb_frames
    from explain.media import gradcam_overlay

    def render(model: ImageClassifier, source: Any, probabilities: Sequence[float]) -> tuple[bytes, str]:
        frames = load_rgb_frames(source, max_frames=settings.max_frames)
        views = [model.frame_views(frame) for frame in frames]
        # An animation's panel shows each frame's own call beside the media's.
        per_frame = model.frame_probabilities(views).tolist() if len(frames) > 1 else None
        encoded = gradcam_overlay(model, views, list(probabilities), model.labels, per_frame)
        return encoded.data, encoded.ext

    return render


def classify(
    store: Store,
    config: Config,
    model: ImageClassifier,
    runner: FeatureRunner | None = None,
    *,
    limit: int | None = None,
    progress: bool = False,
) -> ClassifySummary:
    """`classify_pending` with the [classifier] settings (borderline thresholds, batches, overlays)."""
    from bot.classify import classify_pending

    settings = config.classifier
    return classify_pending(
        store,
        model,
        runner=runner or make_runner(model, settings, config.data_path),
        borderline_confidence=settings.borderline_confidence,
        borderline_margin=settings.borderline_margin,
        batch_size=settings.batch_size,
        max_frames=settings.max_frames,
        overlay=overlay_renderer(settings),
        limit=limit,
        progress=progress,
    )


class ActiveModel:
    """The active (else shipped default) model and its feature runner, loaded once and reloaded only when
    another model becomes active: the frozen trunk is built once, not on every poll. `lock` serialises
    its users (a classify, a retrain, an explanation hooking the shared model)."""

    def __init__(self, config: Config):
        self.config = config
        self.lock = threading.Lock()
        self._loaded: tuple[Path, Any, Any] | None = None  # (model file, model, feature runner)

    def path(self, store: Store) -> Path:
        from classifier.versions import resolve_model_path

        return Path(resolve_model_path(store, None))

    def model(self, store: Store) -> ImageClassifier:
        return self.get(store)[0]

    def get(self, store: Store) -> tuple[ImageClassifier, FeatureRunner]:
        """(model, runner) of the active model. Call with `lock` held."""
        from classifier.model import load_model as load_model_file
        from classifier.runtime import trunk_weights_loader

        path = self.path(store)
        if self._loaded is None or self._loaded[0] != path:
            model = load_model_file(path, trunk_weights_loader(self.config.classifier, self.config.data_path))
            self._loaded = (path, model, make_runner(model, self.config.classifier, self.config.data_path))
        return self._loaded[1], self._loaded[2]


def explain_media(
    model: ImageClassifier,
    source: Path | bytes,
    method: str,
    *,
    target: int | None = None,
    options: dict | None = None,
    max_frames: int = 4,
):
    """The overlay (`EncodedImage`) of `method` for one media, scored by the model's own rule."""
    from explain.media import explain_image

    return explain_image(model, source, method=method, target=target, method_options=options, max_frames=max_frames)


class ActiveModelExplainer:
    """The chat's `Explainer`: (image file, method) -> (overlay bytes, "png" | "gif" | "mp4") from the
    active model. It runs in a worker thread, so it reads the models table through a Store of its own; one
    explanation runs at a time (Grad-CAM hooks the shared model)."""

    def __init__(self, config: Config, active: ActiveModel | None = None):
        self.config = config
        self.active = active or ActiveModel(config)

    def __call__(self, image_path: Path, method: str) -> tuple[bytes, str]:
        # Read-only: an explanation only reads the models table, and must work on a read-only data dir too.
        with Store.open(self.config.data_path, read_only=True) as store, self.active.lock:
            model = self.active.model(store)
            overlay = explain_media(model, image_path, method, max_frames=self.config.classifier.max_frames)
        return overlay.data, overlay.ext
