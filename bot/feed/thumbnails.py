"""Gallery thumbnails: made once per media and spec, stored as derived blobs, found again via `thumbnails`."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from classifier.preprocess import load_rgb_frames, to_rgb
from classifier.video import is_video
from storage import Store, utc_now

FORMATS = {"webp": ("WEBP", "image/webp", "webp"), "jpeg": ("JPEG", "image/jpeg", "jpg")}


@dataclass(frozen=True)
class ThumbnailSpec:
    size: int = 480  # fits in size x size, never enlarged
    format: str = "webp"

    @property
    def key(self) -> str:
        """Recorded with each thumbnail, so a changed size or format makes new ones instead of reusing old."""
        return f"{self.format}-{self.size}"

    @property
    def mime(self) -> str:
        return FORMATS[self.format][1]

    @property
    def ext(self) -> str:
        return FORMATS[self.format][2]


@dataclass(frozen=True)
class Thumbnail:
    sha256: str
    ext: str
    mime: str
    width: int
    height: int


def fitted_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The thumbnail's pixel size for an image of width x height: what Pillow's `thumbnail` produces."""
    if width <= size and height <= size:
        return width, height
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def render_thumbnail(source: Path, spec: ThumbnailSpec) -> tuple[bytes, int, int]:
    """Encode the first frame (upright, alpha on white) of `source` to fit the spec; returns bytes and size.

    A video's thumbnail is its first frame: the gallery's poster, shown until the clip plays."""
    if is_video(source):
        frame = load_rgb_frames(source, max_frames=1)[0]
    else:
        with Image.open(source) as image:
            # JPEGs decode straight at 1/2 to 1/8 scale when that still covers the thumbnail: 3-4x faster on
            # camera-sized files. Other formats ignore it.
            image.draft("RGB", (spec.size * 2, spec.size * 2))
            frame = to_rgb(ImageOps.exif_transpose(image))
    frame.thumbnail((spec.size, spec.size), Image.LANCZOS)
    buffer = io.BytesIO()
    pillow_format = FORMATS[spec.format][0]
    options = {"quality": 82, "method": 4} if pillow_format == "WEBP" else {"quality": 85, "optimize": True}
    frame.save(buffer, pillow_format, **options)
    return buffer.getvalue(), frame.width, frame.height


def stored_thumbnail(store: Store, media_id: int, spec: ThumbnailSpec) -> Thumbnail | None:
    row = store.query_one(
        "SELECT sha256, ext, mime, width, height FROM thumbnails WHERE media_id = ? AND spec = ?", (media_id, spec.key)
    )
    if row is None or not store.derived.exists(row["sha256"], row["ext"]):
        return None
    return Thumbnail(**row)


def record_thumbnail(
    store: Store, media_id: int, spec: ThumbnailSpec, data: bytes, width: int, height: int
) -> Thumbnail:
    """Store the encoded bytes as a derived blob and remember which media and spec they belong to."""
    digest = store.derived.put(data, spec.ext)
    store.execute(
        "INSERT INTO thumbnails (media_id, spec, sha256, ext, mime, width, height, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (media_id, spec) DO UPDATE SET "
        "sha256 = excluded.sha256, ext = excluded.ext, mime = excluded.mime, width = excluded.width, "
        "height = excluded.height, created_at = excluded.created_at",
        (media_id, spec.key, digest, spec.ext, spec.mime, width, height, utc_now()),
    )
    return Thumbnail(digest, spec.ext, spec.mime, width, height)
