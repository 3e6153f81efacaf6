"""`illustfeed explain`: render where the classifier looked in a file or a stored media item.

torch, Pillow and explain/ are imported inside the handler: every `illustfeed` command builds this
parser, and only `explain` needs them.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bot.cli import CommandError, open_store
from bot.config import Config
from storage.files import atomic_write_bytes
from classifier import LABELS

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

    from storage import Store

# The names of explain.media.METHODS (a test keeps the two equal), here so --help needs no torch.
METHOD_NAMES: tuple[str, ...] = ("gradcam", "guided-gradcam", "lime")


def register(subparsers: argparse._SubParsersAction) -> None:
    parents = getattr(subparsers, "common_parents", [])
    parser = subparsers.add_parser(
        "explain", parents=parents, help="show where the classifier looked (Grad-CAM, Guided Grad-CAM, LIME)"
    )
    parser.add_argument("media", metavar="PATH_OR_MEDIA_ID", help="an image file, or a media id / sha256 prefix")
    parser.add_argument("--method", choices=METHOD_NAMES, default="gradcam")
    parser.add_argument("--target", choices=LABELS, help="class to explain (default: the predicted one)")
    parser.add_argument("--out", required=True, type=Path, help="overlay file (.png; animated media: .gif)")
    parser.add_argument("--samples", type=int, default=1000, help="LIME: perturbed samples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="LIME: random seed of the samples (default 0)")
    parser.add_argument("--model", metavar="VERSION_OR_PATH", help="default: the active model")
    parser.set_defaults(handler=cmd_explain)


def load_explained_model(store: Store, config: Config, version_or_path: str | None) -> nn.Module:
    """The classifier's model as `classify` loads it: the given version or file, else the active one."""
    from classifier.model import ModelFileError
    from classifier.runtime import load_classifier
    from classifier.weights import WeightsError

    try:
        return load_classifier(store, config, version_or_path)
    except (ModelFileError, WeightsError) as error:
        raise CommandError(f"explain: {error}") from error


def model_frame_views(model: nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """How the model frames an image into views: its FeatureSpec when it has one, else the eval crop."""
    spec = getattr(model, "spec", None)
    if spec is None:
        from explain.media import eval_crop_views

        return eval_crop_views
    from classifier.features import image_views

    return lambda frame: image_views(frame, spec)


def model_probabilities(model: nn.Module) -> Callable[[nn.Module, Sequence[torch.Tensor]], list[float]]:
    """The product classifier's own rule (views' vectors aggregated per frame, calibrated, frames averaged)
    when the model has one, so the panel shows what `classify` stores; else averaged softmax."""
    if not hasattr(model, "probabilities_from_vectors"):
        from explain.media import media_probabilities

        return media_probabilities
    import torch

    from classifier.features import aggregate_views
    from explain.base import evaluating

    def calibrated(model: nn.Module, views_per_frame: Sequence[torch.Tensor]) -> list[float]:
        with torch.inference_mode(), evaluating(model):
            vectors = torch.stack([aggregate_views(model.extractor(views)) for views in views_per_frame])
            return model.probabilities_from_vectors(vectors).mean(0).tolist()

    return calibrated


def resolve_source(reference: str, store: Store) -> Path:
    """An existing file path as given, else the stored blob of a media id or sha256 prefix."""
    path = Path(reference)
    if path.is_file():
        return path
    if path.suffix or os.sep in reference:
        raise CommandError(f"no such file: {reference}")
    return store.media_path(store.resolve_media(reference))


def explain_to_file(
    model: nn.Module,
    source: Path,
    out: Path,
    method: str,
    target_label: str | None,
    lime_samples: int,
    lime_seed: int,
    max_frames: int,
) -> Path:
    """Render the explanation of `source` to `out` (suffix corrected to .gif for animated media); the path."""
    from explain import ExplainError
    from explain.media import explain_image

    labels = tuple(getattr(model, "labels", LABELS))
    if target_label is not None and target_label not in labels:
        raise CommandError(f"--target {target_label!r} is not one of the model's labels {labels}")
    options = {"num_samples": lime_samples, "seed": lime_seed} if method == "lime" else None
    try:
        overlay = explain_image(
            model,
            source,
            method=method,
            target=None if target_label is None else labels.index(target_label),
            labels=labels,
            method_options=options,
            frame_views=model_frame_views(model),
            probabilities_of=model_probabilities(model),
            max_frames=max_frames,
        )
    except ExplainError as error:
        raise CommandError(f"explain {source}: {error}") from error
    written = out if out.suffix.lower() == f".{overlay.ext}" else out.with_suffix(f".{overlay.ext}")
    atomic_write_bytes(written, overlay.data)
    return written


def cmd_explain(args: argparse.Namespace, config: Config) -> int:
    if args.samples < 2:
        raise CommandError(f"--samples must be at least 2, got {args.samples}")
    with open_store(config) as store:
        source = resolve_source(args.media, store)
        model = load_explained_model(store, config, args.model)
        written = explain_to_file(model, source, args.out, args.method, args.target, args.samples, args.seed,
                                  max_frames=config.classifier.max_frames)
    note = f" (a {written.suffix[1:].upper()} overlay, so the suffix was changed)" if written != args.out else ""
    print(f"wrote {written}{note}")
    return 0
