"""Explaining a whole media item: every sampled frame explained for the media's class, encoded as PNG/GIF.

`gradcam_overlay` is what the classifier calls for borderline calls; `explain_image` is what the CLI
calls on a file or a stored blob.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from classifier import LABELS
from classifier.preprocess import ImageModeError, imagenet_eval_tensor, load_rgb_frames
from explain.base import ExplainError
from explain.gradcam import grad_cam
from explain.guided import guided_grad_cam
from explain.lime import lime
from explain.overlay import Call, EncodedImage, Explanation, encode, render_frame

DEFAULT_MAX_FRAMES = 4  # as many frames as the classifier averages over


@dataclass(frozen=True)
class Method:
    title: str  # as the panel names it
    explain: Callable[..., Explanation]  # (model, image [1,3,H,W], target, **options)


METHODS: dict[str, Method] = {
    "gradcam": Method("Grad-CAM", grad_cam),
    "guided-gradcam": Method("Guided Grad-CAM", guided_grad_cam),
    "lime": Method("LIME", lime),
}


class UnreadableImageError(ExplainError):
    """The input is not an image Pillow can decode."""


def explain_frames(
    model: nn.Module,
    rgb_frames: Sequence[Image.Image],
    input_tensors: Sequence[torch.Tensor] | torch.Tensor,
    probabilities: Sequence[float],
    labels: Sequence[str] = LABELS,
    method: str = "gradcam",
    target: int | None = None,
    method_options: Mapping[str, Any] | None = None,
) -> EncodedImage:
    """Explain each frame for one class and render the overlays: PNG for one frame, animated GIF for more.

    rgb_frames: the decoded frames (`classifier.preprocess.load_rgb_frames`), full size.
    input_tensors: the matching preprocessed tensors, [3, H, W] each or stacked [N, 3, H, W]
        (`imagenet_eval_tensor`); maps are drawn over the centre crop that recipe keeps.
    probabilities: the media's probabilities per label (averaged over frames, as the classifier does).
    target: index of the class to explain; None explains the media's predicted class in every frame.
    """
    if method not in METHODS:
        raise ExplainError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    if len(rgb_frames) == 0 or len(rgb_frames) != len(input_tensors):
        raise ExplainError(f"got {len(rgb_frames)} frames but {len(input_tensors)} input tensors")
    if len(probabilities) != len(labels):
        raise ExplainError(f"got {len(probabilities)} probabilities for {len(labels)} labels")
    explained = int(np.argmax(probabilities)) if target is None else target
    if not 0 <= explained < len(labels):
        raise ExplainError(f"target class {explained} is outside the {len(labels)} labels")
    chosen = METHODS[method]
    call = Call(method=chosen.title, labels=labels, probabilities=probabilities, target=explained)
    rendered = []
    for frame, tensor in zip(rgb_frames, input_tensors):
        explanation = chosen.explain(model, tensor.reshape(1, *tensor.shape[-3:]), explained, **(method_options or {}))
        rendered.append(render_frame(frame, explanation, call))
    return encode(rendered)


def gradcam_overlay(
    model: nn.Module,
    rgb_frames: Sequence[Image.Image],
    input_tensors: Sequence[torch.Tensor] | torch.Tensor,
    probabilities: Sequence[float],
    labels: Sequence[str] = LABELS,
) -> EncodedImage:
    """The Grad-CAM overlay stored for a borderline call, for the predicted class (argmax of probabilities).

    Arguments as in `explain_frames`. Returns `EncodedImage(data, ext)`: ext "png" for a still, "gif" for
    animated media, ready for `store.derived.put(overlay.data, overlay.ext)`.
    """
    return explain_frames(model, rgb_frames, input_tensors, probabilities, labels, method="gradcam")


def decode_frames(source: bytes | Path, max_frames: int = DEFAULT_MAX_FRAMES) -> list[Image.Image]:
    """Frames as RGB, or UnreadableImageError naming the source and what went wrong."""
    name = str(source) if isinstance(source, Path) else f"{len(source)} bytes of input"
    try:
        return load_rgb_frames(source, max_frames=max_frames)
    except (UnidentifiedImageError, ImageModeError, OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError/ValueError depending on the codec.
        raise UnreadableImageError(f"cannot decode {name} as an image: {error}") from error


def media_probabilities(model: nn.Module, input_tensors: torch.Tensor) -> list[float]:
    """Softmax per frame, averaged over frames (the classifier's rule for animated media)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return torch.softmax(model(input_tensors), dim=1).mean(dim=0).tolist()
    finally:
        model.train(was_training)


def explain_image(
    model: nn.Module,
    source: bytes | Path,
    method: str = "gradcam",
    target: int | None = None,
    labels: Sequence[str] = LABELS,
    method_options: Mapping[str, Any] | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> EncodedImage:
    """Decode a file or blob, classify its frames and render the chosen explanation (PNG, or GIF if animated)."""
    frames = decode_frames(source, max_frames=max_frames)
    input_tensors = torch.stack([imagenet_eval_tensor(frame) for frame in frames])
    probabilities = media_probabilities(model, input_tensors)
    if len(probabilities) != len(labels):
        raise ExplainError(f"model gives {len(probabilities)} classes but there are {len(labels)} labels")
    return explain_frames(model, frames, input_tensors, probabilities, labels, method, target, method_options)
