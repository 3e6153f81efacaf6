"""The mechanism every explanation method shares: model state, target choice, gradient capture, map finishing.

A method module states only its own idea (how to weigh channels, how to treat ReLU gradients, how to
perturb); this module owns the forward/backward passes, the hooks and their removal, upsampling and
normalisation, so adding a method never touches the others (the shape of pytorch-grad-cam's base_cam).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classifier.preprocess import IMAGENET_MEAN, IMAGENET_STD
from classifier.vgg import LAST_CONV_RELU_INDEX


class ExplainError(ValueError):
    """An explanation cannot be computed for the given model, image or target."""


@dataclass(frozen=True)
class TargetGradients:
    """One forward/backward pass: the class explained and the gradients of its score."""

    logits: torch.Tensor  # [num_classes], detached
    target: int
    activations: torch.Tensor | None  # [channels, h, w] output of the captured layer, detached
    activation_gradients: torch.Tensor | None  # d score / d activations, same shape
    input_gradients: torch.Tensor | None  # [3, H, W] d score / d image


def check_image_batch(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ExplainError(f"expected one preprocessed image of shape [1, 3, H, W], got {shape}")


def default_layer(model: nn.Module) -> nn.Module:
    """The ReLU after VGG16's conv5_3 (`features.29`): the last map that still has spatial layout."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or len(features) <= LAST_CONV_RELU_INDEX:
        raise ExplainError(
            f"{type(model).__name__} has no VGG16 `features.{LAST_CONV_RELU_INDEX}`; pass the layer to explain"
        )
    return features[LAST_CONV_RELU_INDEX]


def resolve_target(logits: torch.Tensor, target: int | None) -> int:
    num_classes = logits.shape[-1]
    if target is None:
        return int(logits.argmax())
    if not 0 <= int(target) < num_classes:
        raise ExplainError(f"target class {target} is outside the model's {num_classes} classes")
    return int(target)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) for the duration, then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def target_gradients(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None = None,
    layer: nn.Module | None = None,
    wrt_input: bool = False,
) -> TargetGradients:
    """Gradients of the target class score (pre-softmax) w.r.t. `layer`'s output and/or the input.

    Gradients come from `torch.autograd.grad`, so no parameter `.grad` is written; the one forward hook is
    removed before returning, and the graph dies with this call (so repeated calls keep memory flat).
    Works inside `torch.no_grad()`/`inference_mode()` callers and with in-place ReLUs (the captured
    tensor is the layer's output after the in-place op, and nothing later modifies it in place).
    """
    check_image_batch(image)
    if layer is None and not wrt_input:
        raise ExplainError("nothing to differentiate: give a layer, or ask for input gradients")
    captured: list[torch.Tensor] = []

    def keep_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if wrt_input:
            captured.append(output)
            return None
        # Only the part after the layer is differentiated: cut the graph here, which also makes the
        # method work on a model whose parameters are frozen.
        cut = output.detach().requires_grad_(True)
        captured.append(cut)
        return cut

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(evaluating(model))
        if layer is not None:
            stack.callback(layer.register_forward_hook(keep_output).remove)
        batch = image.detach().clone().requires_grad_(wrt_input)
        logits = model(batch)
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ExplainError(f"model returned logits of shape {tuple(logits.shape)}, expected [1, classes]")
        chosen = resolve_target(logits.detach()[0], target)
        if layer is not None and len(captured) != 1:
            raise ExplainError(f"layer {layer!r} ran {len(captured)} times in one forward pass, expected once")
        wanted = ([captured[0]] if layer is not None else []) + ([batch] if wrt_input else [])
        gradients = torch.autograd.grad(logits[0, chosen], wanted)
    activation_gradients = gradients[0][0] if layer is not None else None
    return TargetGradients(
        logits=logits.detach()[0],
        target=chosen,
        activations=captured[0].detach()[0] if layer is not None else None,
        activation_gradients=activation_gradients,
        input_gradients=gradients[-1][0] if wrt_input else None,
    )


def finish_map(evidence: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Positive evidence [h, w] -> float32 [H, W] in [0, 1]: ReLU, bilinear upsampling, divided by its peak.

    Dividing by the peak (not min-max) keeps "no evidence" at 0; a map with no positive value is all zeros.
    """
    positive = F.relu(evidence.detach().float())[None, None]
    upsampled = F.interpolate(positive, size=size, mode="bilinear", align_corners=False)[0, 0]
    peak = float(upsampled.max())
    if not peak > 0.0:
        return np.zeros(size, dtype=np.float32)
    return (upsampled / peak).clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)


def unnormalised_rgb(view: torch.Tensor) -> np.ndarray:
    """A preprocessed view [3, H, W] back to the uint8 RGB [H, W, 3] the network was shown."""
    pixels = view.detach().float().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return (pixels.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
