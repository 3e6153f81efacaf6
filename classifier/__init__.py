"""Sorting images into illustration / screenshot / photo with a VGG16 backbone."""
from __future__ import annotations

from typing import Any

LABELS: tuple[str, ...] = ("illustration", "screenshot", "photo")

__all__ = ["LABELS", "build_vgg16"]


def __getattr__(name: str) -> Any:
    # Imported on first use: torch takes seconds to load, and ingest or `illustfeed status` never need it.
    if name == "build_vgg16":
        from classifier.vgg import build_vgg16

        return build_vgg16
    raise AttributeError(f"module 'classifier' has no attribute {name!r}")
