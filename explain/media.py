"""Explaining a whole media item: every view of every sampled frame, for the media's class, as PNG, GIF or MP4.

Stills, animated GIF/APNG/WebP and videos (MP4, QuickTime, WebM) take the same path: frames are sampled by
`classifier.preprocess.load_rgb_frames`, each frame gets its own map and its own probabilities in the panel.

`gradcam_overlay` is what the classifier calls for borderline calls; `explain_image` is what the CLI
calls on a file or a stored blob.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from classifier import LABELS
from classifier.preprocess import ImageModeError, imagenet_eval_tensor, load_rgb_frames
from explain import METHODS, method_function
from explain.base import ExplainError, evaluating
from explain.overlay import Call, EncodedImage, compose, encode, paint

DEFAULT_MAX_FRAMES = 4  # as many frames as the classifier averages over


class UnreadableImageError(ExplainError):
    """The input is not an image Pillow can decode."""


def explain_frames(
    model: nn.Module,
    views_per_frame: Sequence[torch.Tensor],
    probabilities: Sequence[float],
    labels: Sequence[str] = LABELS,
    method: str = "gradcam",
    target: int | None = None,
    method_options: Mapping[str, Any] | None = None,
    frame_probabilities: Sequence[Sequence[float]] | None = None,
) -> EncodedImage:
    """Explain every view of every frame for one class and render them: PNG for one frame, GIF or MP4 for more.

    views_per_frame: per decoded frame, the preprocessed views the classifier ran, [V, 3, S, S] (or one
        view [3, S, S]); ImageNet-normalised, as `classifier.preprocess.normalize` makes them.
    probabilities: the media's probability per label, as the classifier computed it (shown in the panel).
    target: index of the class to explain; None explains the media's predicted class in every view.
    frame_probabilities: each frame's own probabilities; when given, each frame's panel shows them (label and
        bars) and a caption with the frame's place and the whole media's call.
    Each view is explained on its own logit for the class (views are not re-aggregated).
    """
    if method not in METHODS:
        raise ExplainError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    if len(views_per_frame) == 0:
        raise ExplainError("no frames to explain")
    if len(probabilities) != len(labels):
        raise ExplainError(f"got {len(probabilities)} probabilities for {len(labels)} labels")
    explained = int(np.argmax(probabilities)) if target is None else target
    if not 0 <= explained < len(labels):
        raise ExplainError(f"target class {explained} is outside the {len(labels)} labels")
    if frame_probabilities is not None and len(frame_probabilities) != len(views_per_frame):
        raise ExplainError(
            f"got probabilities for {len(frame_probabilities)} frames, but {len(views_per_frame)} frames"
        )
    chosen = METHODS[method]
    compute = method_function(method)
    rendered = []
    for index, views in enumerate(views_per_frame):
        views = views.reshape(-1, *views.shape[-3:])
        painted = [paint(view, compute(model, view[None], explained, **(method_options or {}))) for view in views]
        rendered.append(
            compose(
                painted,
                frame_call(
                    chosen.title, labels, probabilities, explained, index, len(views_per_frame), frame_probabilities
                ),
            )
        )
    return encode(rendered)


def frame_call(
    method: str,
    labels: Sequence[str],
    probabilities: Sequence[float],
    target: int,
    index: int,
    frames: int,
    frame_probabilities: Sequence[Sequence[float]] | None,
) -> Call:
    """What frame `index` of `frames` states: its own probabilities when known, else the media's."""
    if frame_probabilities is None:
        return Call(method=method, labels=labels, probabilities=probabilities, target=target)
    media_label = labels[int(np.argmax(probabilities))]
    caption = f"frame {index + 1}/{frames}; whole media: {media_label} {float(max(probabilities)):.0%}"
    return Call(method=method, labels=labels, probabilities=frame_probabilities[index], target=target, caption=caption)


def gradcam_overlay(
    model: nn.Module,
    views_per_frame: Sequence[torch.Tensor],
    probabilities: Sequence[float],
    labels: Sequence[str] = LABELS,
    frame_probabilities: Sequence[Sequence[float]] | None = None,
) -> EncodedImage:
    """The Grad-CAM overlay stored for a borderline call: the predicted class (argmax of `probabilities`).

    `model` must be the eager nn.Module (gradients flow through it; a frozen TorchScript or int8 trunk
    cannot be differentiated). Arguments as in `explain_frames`. Returns `EncodedImage(data, ext)`, ext
    "png" for a still and "gif" or "mp4" for animated media and videos, for
    `store.derived.put(overlay.data, overlay.ext)`.
    """
    return explain_frames(
        model, views_per_frame, probabilities, labels, method="gradcam", frame_probabilities=frame_probabilities
    )


def decode_frames(source: bytes | Path, max_frames: int = DEFAULT_MAX_FRAMES) -> list[Image.Image]:
    """Frames as RGB, or UnreadableImageError naming the source and what went wrong."""
    name = str(source) if isinstance(source, Path) else f"{len(source)} bytes of input"
    try:
        return load_rgb_frames(source, max_frames=max_frames)
    except (UnidentifiedImageError, ImageModeError, OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated or corrupt data as OSError, SyntaxError or ValueError depending on codec;
        # classifier.video.VideoError is a ValueError.
        raise UnreadableImageError(f"cannot decode {name} as an image or video: {error}") from error


def eval_crop_views(frame: Image.Image) -> torch.Tensor:
    """One view [1, 3, 224, 224]: the torchvision ImageNet eval crop."""
    return imagenet_eval_tensor(frame)[None]


def media_probabilities(model: nn.Module, views_per_frame: Sequence[torch.Tensor]) -> list[float]:
    """Softmax of every view of every frame, averaged."""
    with torch.inference_mode(), evaluating(model):
        return torch.softmax(model(torch.cat(list(views_per_frame))), dim=1).mean(dim=0).tolist()


def explain_image(
    model: nn.Module,
    source: bytes | Path,
    method: str = "gradcam",
    target: int | None = None,
    labels: Sequence[str] | None = None,
    method_options: Mapping[str, Any] | None = None,
    frame_views: Callable[[Image.Image], torch.Tensor] | None = None,
    probabilities_of: Callable[[nn.Module, Sequence[torch.Tensor]], Sequence[float]] | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> EncodedImage:
    """Decode a file or blob, run its frames' views and render the explanation (PNG; GIF or MP4 if animated).

    `frame_views` frames one RGB frame into the views the model takes, [V, 3, S, S]; `probabilities_of`
    gives the probabilities from the model and some frames' views: the media's, and each frame's own (shown
    in the panel). By default both come from the model when it is the product classifier (its own framing
    and scoring rule, so the panel shows what `classify` stores), else the ImageNet eval crop and averaged
    softmax.
    """
    labels = tuple(labels or getattr(model, "labels", LABELS))
    frame_views = frame_views or getattr(model, "frame_views", eval_crop_views)
    if probabilities_of is None:
        probabilities_of = _model_scoring_rule if hasattr(model, "probabilities_of_views") else media_probabilities
    frames = decode_frames(source, max_frames=max_frames)
    views_per_frame = [frame_views(frame) for frame in frames]
    probabilities = probabilities_of(model, views_per_frame)
    if len(probabilities) != len(labels):
        raise ExplainError(f"the model gives {len(probabilities)} classes but there are {len(labels)} labels")
    per_frame = [probabilities_of(model, [views]) for views in views_per_frame] if len(frames) > 1 else None
    return explain_frames(model, views_per_frame, probabilities, labels, method, target, method_options, per_frame)


def _model_scoring_rule(model: nn.Module, views_per_frame: Sequence[torch.Tensor]) -> list[float]:
    with evaluating(model):
        return model.probabilities_of_views(views_per_frame)
