"""Grad-CAM (Selvaraju et al., 2017): a channel's weight is the spatial mean of the class score's gradient."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from explain.cam import class_activation_map


def grad_cam_weights(_activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return gradients.mean(dim=(1, 2))


def grad_cam(
    model: nn.Module, image: torch.Tensor, target: int | None = None, layer: nn.Module | None = None
) -> np.ndarray:
    """Where `model` found evidence for class `target` (None: its predicted class) in `image` [1, 3, H, W].

    Returns float32 [H, W] in [0, 1]; all zeros when the class has no positive evidence. `layer` defaults
    to VGG16's last conv block (`features.29`). Leaves no hooks and no parameter gradients behind.
    """
    heatmap, _target = class_activation_map(model, image, grad_cam_weights, target=target, layer=layer)
    return heatmap
