"""Image decoding to RGB and the torchvision ImageNet eval recipe, in Pillow + numpy.

Shared by ingest (validation) and the classifier, so every stage sees an image the same way.
"""

from __future__ import annotations

import io
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:  # torch is imported where tensors are made, so ingest and the CLI start fast
    import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE_SHORT_SIDE = 256
CROP_SIZE = 224
WHITE = (255, 255, 255)


class ImageModeError(ValueError):
    """The image's pixel mode cannot be turned into RGB."""


def open_image(source: str | Path | bytes) -> Image.Image:
    """Open a path or bytes lazily (header only); callers decide how much to decode."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(source)


def to_rgb(frame: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, palette/CMYK/16-bit/float/greyscale converted."""
    try:
        return _to_rgb(frame)
    except ValueError as error:  # Pillow: "conversion from X to Y not supported"
        raise ImageModeError(f"pixel mode {frame.mode!r} cannot be converted to RGB: {error}") from None


def _to_rgb(frame: Image.Image) -> Image.Image:
    mode = frame.mode
    if mode == "RGB":
        return frame
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: scale the actual range to 8 bits instead of clipping at 255.
        values = np.asarray(frame, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        grey = ((values - low) * scale).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in frame.info:
        frame = frame.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = frame.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return frame.convert("RGB")
    raise ImageModeError(f"pixel mode {mode!r} cannot be converted to RGB")


def frame_count(image: Image.Image) -> int:
    return int(getattr(image, "n_frames", 1) or 1)


def evenly_spaced(total: int, wanted: int) -> list[int]:
    """Up to `wanted` frame indices spread over `total` frames, first frame always included."""
    if total <= wanted:
        return list(range(total))
    return sorted({round(i * (total - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [0]


def load_rgb_frames(source: str | Path | bytes, max_frames: int = 4) -> list[Image.Image]:
    """Decode up to `max_frames` evenly spaced frames as upright RGB images (EXIF orientation applied).

    Videos (MP4, QuickTime, WebM) are decoded with PyAV (classifier/video.py); their frames are sampled the
    same way. A video that cannot be decoded raises `classifier.video.VideoError`, a ValueError.
    """
    from classifier.video import is_video, sample_frames

    if is_video(source):
        return sample_frames(source, lambda total: evenly_spaced(total, max_frames))
    with open_image(source) as image:
        frames = []
        for index in evenly_spaced(frame_count(image), max_frames):
            image.seek(index)
            frame = ImageOps.exif_transpose(image.copy()) if index == 0 else image.copy()
            frames.append(to_rgb(frame))
        return frames


def resize_short_side(image: Image.Image, size: int = RESIZE_SHORT_SIDE) -> Image.Image:
    """torchvision `Resize(size)`: shorter side to `size`, longer side truncated as torchvision does."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), Image.BILINEAR)


def center_crop(image: Image.Image, size: int = CROP_SIZE) -> Image.Image:
    """torchvision `CenterCrop(size)` for images at least `size` on both sides."""
    width, height = image.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(image: Image.Image) -> "torch.Tensor":
    """`ToTensor` + ImageNet `Normalize`: RGB image -> float32 tensor [3, H, W]."""
    import torch

    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def imagenet_eval_tensor(image: Image.Image) -> "torch.Tensor":
    """The torchvision ImageNet eval transform: Resize(256), CenterCrop(224), ToTensor, Normalize."""
    return normalize(center_crop(resize_short_side(to_rgb(image))))
