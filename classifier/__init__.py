"""Sorting images into illustration / screenshot / photo with a VGG16 backbone."""
from classifier.vgg import build_vgg16

LABELS: tuple[str, ...] = ("illustration", "screenshot", "photo")

__all__ = ["LABELS", "build_vgg16"]
