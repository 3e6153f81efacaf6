"""Real videos encoded for tests with PyAV: a picture panned across the frame, as X serves an animated GIF."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image

from tests.conftest import SHARED

DEV_CORPUS = SHARED / "corpus" / "dev"


def dev_picture(label: str = "illustration", index: int = 0) -> Image.Image:
    """A real picture of the shared dev corpus, read in place (never copied into the repository)."""
    files = sorted((DEV_CORPUS / label).glob("*.jpg"))
    with Image.open(files[index]) as image:
        return image.convert("RGB")


def panned_frames(picture: Image.Image, size: tuple[int, int], frames: int) -> list[np.ndarray]:
    """`frames` crops of `size` sliding across `picture` (scaled so the crop always fits), as RGB arrays."""
    width, height = size
    scale = max(width * 1.25 / picture.width, height / picture.height)
    scaled = picture.resize((max(width + 1, round(picture.width * scale)), max(height, round(picture.height * scale))))
    travel = scaled.width - width
    pixels = np.asarray(scaled)
    out = []
    for index in range(frames):
        left = round(travel * index / max(1, frames - 1))
        out.append(np.ascontiguousarray(pixels[:height, left : left + width]))
    return out


def encode_video(
    frames: list[np.ndarray], fps: int = 12, container: str = "mp4", codec: str = "libx264", path: Path | None = None
) -> bytes:
    """Encode RGB frames (even sides) to a video; written to `path` too when given (faststart needs a file)."""
    target = str(path) if path is not None else io.BytesIO()
    options = {"movflags": "faststart"} if path is not None and container == "mp4" else {}
    with av.open(target, "w", format=container, options=options) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path.read_bytes() if path is not None else target.getvalue()


def panned_mp4(picture: Image.Image, size: tuple[int, int] = (320, 240), frames: int = 24, fps: int = 12) -> bytes:
    """A short H.264 MP4 panning over `picture`."""
    return encode_video(panned_frames(picture, size, frames), fps=fps)


def many_frames_mp4(count: int, side: int = 16, fps: int = 1000) -> bytes:
    """A tiny H.264 MP4 of `count` identical frames: a cheap file that declares (and holds) very many frames."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame.from_ndarray(np.zeros((side, side, 3), np.uint8), format="rgb24")
        for index in range(count):
            frame.pts = index
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


HLS_PLAYLIST = (
    b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nvideo0.ts\n"
    b"#EXTINF:2.5,\nvideo1.ts\n#EXT-X-ENDLIST\n"
)


def animation_frames(source: Path | bytes) -> tuple[str, list[Image.Image]]:
    """(format, every frame as RGB) of an animated overlay: a GIF read by Pillow, an MP4 decoded by PyAV."""
    data = source.read_bytes() if isinstance(source, Path) else source
    if data[4:8] == b"ftyp":
        with av.open(io.BytesIO(data), format="mp4") as container:
            return "MP4", [frame.to_image() for frame in container.decode(video=0)]
    with Image.open(io.BytesIO(data)) as image:
        frames = []
        for index in range(image.n_frames):
            image.seek(index)
            frames.append(image.convert("RGB"))
        return image.format, frames
