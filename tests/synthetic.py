"""Generated stand-ins for the three classes, for tests and benchmarks (no licensed images needed).

illustration: flat-colour shapes with dark outlines; screenshot: UI-like bars, panels and text lines;
photo: noisy natural-texture gradients. Deterministic for a given seed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from classifier import LABELS


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, 3))


def drawing(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, _colour(rng, 180))
    draw = ImageDraw.Draw(image)
    outline = max(2, min(size) // 40)
    for _shape in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x1 = x0 + int(rng.integers(width // 6, width // 2))
        y1 = y0 + int(rng.integers(height // 6, height // 2))
        fill = _colour(rng, 30)
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=(10, 10, 10), width=outline)
        else:
            points = [
                (int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1))) for _ in range(int(rng.integers(3, 6)))
            ]
            draw.polygon(points, fill=fill, outline=(10, 10, 10), width=outline)
    return image


def screen(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    width, height = size
    background = (245, 245, 245) if rng.random() < 0.6 else (34, 36, 40)
    text_colour = (40, 40, 40) if background[0] > 128 else (220, 220, 220)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    bar = max(8, height // 10)
    draw.rectangle((0, 0, width, bar), fill=_colour(rng, 20, 120))
    for _panel in range(int(rng.integers(1, 4))):
        x0 = int(rng.integers(2, width // 2))
        y0 = int(rng.integers(bar + 2, max(bar + 3, height // 2)))
        x1 = int(rng.integers(x0 + width // 4, width - 1))
        y1 = int(rng.integers(y0 + height // 5, height - 1))
        draw.rectangle((x0, y0, x1, y1), outline=(150, 150, 150), width=1)
        line = y0 + 4
        while line < y1 - 6:
            draw.text((x0 + 4, line), "lorem ipsum 12:34 ok"[: int(rng.integers(5, 21))], fill=text_colour)
            line += 12
    return image


def natural(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = np.array(_colour(rng, 40, 200), np.float32), np.array(_colour(rng, 20, 160), np.float32)
    mix = (ys / max(1, height - 1))[..., None]
    pixels = top * (1 - mix) + bottom * mix
    texture = rng.normal(0, 1, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    blobs = (
        np.asarray(
            Image.fromarray(((texture - texture.min()) / np.ptp(texture) * 255).astype(np.uint8)).resize(
                size, Image.BICUBIC
            ),
            np.float32,
        )
        - 128
    )
    pixels += 0.35 * blobs + rng.normal(0, 18, (height, width, 3))
    image = Image.fromarray(np.clip(pixels + 5 * np.sin(xs / 7)[..., None], 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(0.6))


MAKERS = {"illustration": drawing, "screenshot": screen, "photo": natural}


def generate(label: str, seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    rng = np.random.default_rng(seed)
    if size is None:
        size = (int(rng.integers(96, 200)), int(rng.integers(96, 200)))
    return MAKERS[label](rng, size)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_dataset(root: str | Path, per_label: int, seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """`root/<label>/<label>_<n>.png` for each label; distinct seeds per image."""
    root = Path(root)
    for label_index, label in enumerate(LABELS):
        (root / label).mkdir(parents=True, exist_ok=True)
        for number in range(per_label):
            image_seed = seed * 1_000_003 + label_index * 10_007 + number
            generate(label, image_seed, size).save(root / label / f"{label}_{number:04d}.png")
    return root


def tiny_base_model(width: float = 0.125, image_size: int = 64, seed: int = 0):
    """An untrained classifier on a seeded random reduced-width trunk ("vgg16-scratch": the model file carries
    the trunk), pooling three depths; for tests and demos that must not need the ImageNet weights."""
    import torch

    from classifier.features import FeatureSpec
    from classifier.model import SCRATCH_BACKBONE, new_classifier
    from classifier.vgg import make_features

    torch.manual_seed(seed)
    trunk = make_features(width)
    spec = FeatureSpec(layers=(15, 22, 29), pooling=("avg", "max"), framing="center_crop", image_size=image_size)
    model = new_classifier(trunk, spec, backbone=SCRATCH_BACKBONE, backbone_width=width)
    model.backbone_delta = {f"features.{name}": tensor.clone() for name, tensor in trunk.state_dict().items()}
    return model.eval()
