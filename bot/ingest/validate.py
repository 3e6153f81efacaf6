"""Decode and check downloaded bytes (Pillow for images, PyAV for videos) before anything is stored; compute the
perceptual hash."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from classifier.preprocess import ImageModeError, frame_count, to_rgb
from classifier.video import DEFAULT_LIMITS, VideoError, VideoLimits, looks_like_hls, probe_video, sniff_video

# Formats a social network serves as images; anything else Pillow happens to read is refused.
ACCEPTED_FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "GIF": ("image/gif", "gif"),
    "WEBP": ("image/webp", "webp"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tiff"),
}
PHASH_SIZE = 32  # the DCT runs on a 32x32 greyscale thumbnail; its 8x8 lowest frequencies make 64 bits


class InvalidImage(ValueError):
    """Bytes that are not an acceptable image; the message is the human-readable reject reason."""


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    ext: str
    width: int  # after EXIF orientation, i.e. as displayed
    height: int
    frames: int
    phash: int  # 64-bit DCT perceptual hash of the first frame
    duration_s: float | None = None  # videos only

    @property
    def is_video(self) -> bool:
        return self.mime.startswith("video/")


def _dct_matrix(size: int) -> np.ndarray:
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(PHASH_SIZE)


def perceptual_hash(rgb: Image.Image) -> int:
    """pHash: bits of the 8x8 low-frequency DCT block above its median (robust to resizing and re-encoding)."""
    grey = rgb.convert("L").resize((PHASH_SIZE, PHASH_SIZE), Image.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term is the brightness, not structure
    return int("".join("1" if bit else "0" for bit in bits), 2)


def _looks_like_text(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"[")) or all(
        32 <= byte < 127 or byte in (9, 10, 13) for byte in head[:256]
    )


def validate_video(data: bytes, limits: VideoLimits) -> ImageInfo:
    """Decode every frame of a video under `limits`; raise InvalidImage with the reason."""
    try:
        video = probe_video(data, limits)
    except VideoError as error:
        raise InvalidImage(str(error)) from None
    return ImageInfo(
        mime=video.format.mime,
        ext=video.format.ext,
        width=video.width,
        height=video.height,
        frames=video.frames,
        phash=perceptual_hash(video.first_frame),
        duration_s=video.duration_s,
    )


def validate_image(
    data: bytes, max_pixels: int, max_bytes: int | None = None, video_limits: VideoLimits = DEFAULT_LIMITS
) -> ImageInfo:
    """Fully decode the first frame (every frame of a video), check limits and modes; raise InvalidImage with
    the reason."""
    if not data:
        raise InvalidImage("empty file (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidImage(f"file is {len(data)} bytes, over the limit of {max_bytes} bytes")
    if looks_like_hls(data[:64]):
        raise InvalidImage("HLS playlist (#EXTM3U text), not a media file: the video is streamed in segments")
    if sniff_video(data[:64]) is not None:
        return validate_video(data, video_limits)
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; our own limit is checked below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise InvalidImage(f"decompression bomb: {error}") from None
        except UnidentifiedImageError:
            kind = "text or HTML" if _looks_like_text(data) else "unknown binary data"
            raise InvalidImage(f"not an image: the bytes look like {kind}") from None
        except Exception as error:  # Pillow raises many types for a cut or mangled header
            raise InvalidImage(f"corrupt image header: {type(error).__name__}: {error}") from None
        with image:
            if image.format not in ACCEPTED_FORMATS:
                raise InvalidImage(f"unsupported image format {image.format}")
            mime, ext = ACCEPTED_FORMATS[image.format]
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImage(
                    f"decompression bomb: {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            try:
                frames = frame_count(image)
                image.seek(0)
                image.load()
                upright = ImageOps.exif_transpose(image)
                rgb = to_rgb(upright)
                phash = perceptual_hash(rgb)
            except ImageModeError as error:
                raise InvalidImage(str(error)) from None
            except Exception as error:  # decoders raise OSError, ValueError, IndexError, struct.error, ...
                raise InvalidImage(
                    f"truncated or corrupt {image.format} data: {type(error).__name__}: {error}"
                ) from None
            return ImageInfo(mime=mime, ext=ext, width=rgb.width, height=rgb.height, frames=frames, phash=phash)


VERIFY_SIZE = 128  # both images are compared as greyscale squares of this size


def _verification_pixels(rgb: Image.Image) -> np.ndarray:
    return np.asarray(rgb.convert("L").resize((VERIFY_SIZE, VERIFY_SIZE), Image.BILINEAR), dtype=np.float32)


def max_block_difference(first: Image.Image, second: Image.Image, block: int = 16) -> float:
    """Largest mean absolute grey-level difference over 16x16 blocks of the two images scaled to one size.

    A re-encoded or resized copy differs a little everywhere; a different screen of the same app differs a
    lot somewhere (a changed line of text), which a global hash distance cannot see.
    """
    difference = np.abs(_verification_pixels(first) - _verification_pixels(second))
    blocks = difference.reshape(VERIFY_SIZE // block, block, VERIFY_SIZE // block, block).mean(axis=(1, 3))
    return float(blocks.max())
