"""Class activation maps: a weighted sum of a conv layer's channels, weights chosen by each CAM method."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from explain.base import default_layer, finish_map, target_gradients

# (activations [K, h, w], their gradients [K, h, w]) -> one weight per channel [K]
ChannelWeights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_activation_map(
    model: nn.Module,
    image: torch.Tensor,
    channel_weights: ChannelWeights,
    target: int | None = None,
    layer: nn.Module | None = None,
) -> tuple[np.ndarray, int]:
    """The map [H, W] in [0, 1] at the input's size, and the class it explains."""
    layer = default_layer(model) if layer is None else layer
    grads = target_gradients(model, image, target=target, layer=layer)
    weights = channel_weights(grads.activations, grads.activation_gradients)
    evidence = torch.einsum("k,khw->hw", weights, grads.activations)
    return finish_map(evidence, size=tuple(image.shape[-2:])), grads.target
