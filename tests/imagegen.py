"""Real images generated for tests: distinct pictures in every format and mode ingest must handle."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A distinct RGB picture per seed: random coloured shapes on a random background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png(seed: int, size=(320, 240)) -> bytes:
    return encode(picture(seed, size), "PNG")


def jpeg(seed: int, size=(320, 240), quality: int = 90) -> bytes:
    return encode(picture(seed, size), "JPEG", quality=quality)


def rgba_png(seed: int) -> bytes:
    image = picture(seed).convert("RGBA")
    alpha = Image.new("L", image.size, 0)
    ImageDraw.Draw(alpha).ellipse((20, 20, 300, 220), fill=255)
    image.putalpha(alpha)
    return encode(image, "PNG")


def palette_png(seed: int) -> bytes:
    return encode(picture(seed).convert("P", palette=Image.ADAPTIVE, colors=16), "PNG")


def cmyk_jpeg(seed: int) -> bytes:
    return encode(picture(seed).convert("CMYK"), "JPEG", quality=90)


def animated_gif(seed: int, frames: int = 5) -> bytes:
    images = [picture(seed * 100 + i, (160, 120)) for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def resized_reencode(data: bytes, scale: float = 0.5, quality: int = 75) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    small = image.resize((int(image.width * scale), int(image.height * scale)), Image.LANCZOS)
    return encode(small, "JPEG", quality=quality)


def bomb_png(width: int = 12000, height: int = 12000) -> bytes:
    """A tiny file that decodes to width x height pixels (a decompression bomb for small limits)."""
    return encode(Image.new("L", (width, height), 0), "PNG", optimize=True)


def exif_rotated_jpeg(seed: int) -> bytes:
    """A landscape-stored JPEG whose EXIF orientation (6) says it displays as portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(picture(seed, (320, 240)), "JPEG", quality=90, exif=exif.tobytes())
