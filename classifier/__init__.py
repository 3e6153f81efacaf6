"""Sorting images into illustration / screenshot / photo with a VGG16 backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS: tuple[str, ...] = ("illustration", "screenshot", "photo")
# The model a fresh install classifies with (issue 4, retrained in issue 15), and its version written beside it
# (`research/train_default.py`) for readers that must not load torch, such as `illustfeed status`.
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


def shipped_default_version() -> str | None:
    try:
        return (SHIPPED_MODEL_DIR / "VERSION").read_text().strip() or None
    except OSError:
        return None


__all__ = ["LABELS", "build_vgg16", "load_model", "run_classifier", "save_model"]

# Public name -> module that defines it.
_LAZY = {
    "build_vgg16": "classifier.vgg",
    "run_classifier": "classifier.inference",
    "load_model": "classifier.model",
    "save_model": "classifier.model",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: torch takes seconds to load, and ingest or `illustfeed status` never need it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'classifier' has no attribute {name!r}")
