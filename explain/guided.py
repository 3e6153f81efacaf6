"""Guided Grad-CAM (Selvaraju et al., 2017): guided-backprop pixel gradients times the Grad-CAM map.

Guided backprop (Springenberg et al., 2015) lets only positive gradients pass back through each ReLU,
which keeps the fine edges that drive a class; multiplying by the coarse Grad-CAM keeps the edges of
the region that mattered for the chosen class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from explain.base import finish_map, target_gradients
from explain.cam import class_activation_map
from explain.gradcam import grad_cam_weights


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Every nn.ReLU of `model` passes back only positive gradients while inside.

    A forward hook puts a gradient hook on each ReLU's output: that hook runs before the ReLU's own
    backward (which already zeroes where the output is 0), so the pair is guided backprop. Module backward
    hooks are not used because they reject in-place ReLUs; gradient hooks die with the graph.
    """

    def clamp_gradient_of_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(lambda gradient: gradient.clamp(min=0.0))

    handles = [m.register_forward_hook(clamp_gradient_of_output) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def guided_backprop(model: nn.Module, image: torch.Tensor, target: int | None = None) -> torch.Tensor:
    """Guided-backprop gradients of the target score w.r.t. the image [3, H, W] (signed, unscaled)."""
    with guided_relus(model):
        return target_gradients(model, image, target=target, wrt_input=True).input_gradients


def guided_grad_cam(
    model: nn.Module, image: torch.Tensor, target: int | None = None, layer: nn.Module | None = None
) -> np.ndarray:
    """Pixel-precise evidence for class `target` (None: predicted) in `image` [1, 3, H, W].

    Returns float32 [H, W] in [0, 1]: per pixel, the largest channel magnitude of guided backprop times
    Grad-CAM, divided by its peak; all zeros when Grad-CAM finds no positive evidence.
    """
    cam, explained = class_activation_map(model, image, grad_cam_weights, target=target, layer=layer)
    pixel_gradients = guided_backprop(model, image, target=explained)
    evidence = pixel_gradients.abs().amax(dim=0) * torch.from_numpy(cam)
    return finish_map(evidence, size=tuple(image.shape[-2:]))
