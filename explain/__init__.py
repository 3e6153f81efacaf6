"""Where the classifier looked: Grad-CAM, Guided Grad-CAM and LIME maps, and overlays for reviewers.

`METHODS` is the one registry of explanation methods, torch-free so the CLI's help and the chat commands
can list them without loading torch: adding a method is its module (one function with the signature of
`explain.gradcam.grad_cam`) plus one entry here. Rendering a media item's overlay (PNG, or GIF when
animated) is `explain.media`. `grad_cam` and `guided_grad_cam` are importable from here too, loaded on first
use (LIME's function shares its module's name: import it from `explain.lime`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    title: str  # as the overlay panel names it
    function: str  # "module:function" computing the Explanation: (model, image [1,3,H,W], target, **options)
    options: tuple[str, ...] = ()  # keyword options it takes (the CLI offers them as flags)


METHODS: dict[str, MethodInfo] = {
    "gradcam": MethodInfo("Grad-CAM", "explain.gradcam:grad_cam"),
    "guided-gradcam": MethodInfo("Guided Grad-CAM", "explain.guided:guided_grad_cam"),
    "lime": MethodInfo("LIME", "explain.lime:lime", options=("num_samples", "seed")),
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
DEFAULT_METHOD = "gradcam"

# Public names loaded lazily (PEP 562), so `import explain` stays torch-free.
_LAZY = {
    "ExplainError": "explain.base",
    "grad_cam": "explain.gradcam",
    "guided_grad_cam": "explain.guided",
    "LimeExplanation": "explain.lime",
}

__all__ = ["DEFAULT_METHOD", "METHODS", "METHOD_NAMES", "MethodInfo", *_LAZY]


def method_function(name: str):
    """The function computing method `name`'s Explanation."""
    module, function = METHODS[name].function.split(":")
    return getattr(importlib.import_module(module), function)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'explain' has no attribute {name!r}")
