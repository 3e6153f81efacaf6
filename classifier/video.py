"""Video decoding with PyAV (FFmpeg): which container some bytes are, a full decode under limits, sampled frames.

Shared by ingest (validation) and everything that reads frames through `classifier.preprocess.load_rgb_frames`
(classification, Grad-CAM, thumbnails, near-duplicate checks), so a video is seen the same way everywhere.
The demuxer is always named from the sniffed magic bytes, never guessed by FFmpeg: a text playlist cannot
reach FFmpeg's HLS demuxer, which would open the segment URLs it lists.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from PIL import Image

if TYPE_CHECKING:  # av is imported where a video is opened, so image-only commands start without FFmpeg
    import av.container

# Top-level boxes a QuickTime file may start with when it has no `ftyp` (files from old cameras and editors).
QUICKTIME_FIRST_BOXES = (b"moov", b"mdat", b"wide", b"free", b"skip")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska and WebM
SNIFF_BYTES = 64


@dataclass(frozen=True)
class VideoFormat:
    name: str  # as reject reasons name it
    mime: str
    ext: str
    demuxer: str  # FFmpeg's input format


MP4 = VideoFormat("MP4", "video/mp4", "mp4", "mp4")
QUICKTIME = VideoFormat("QuickTime", "video/quicktime", "mov", "mov")
WEBM = VideoFormat("WebM", "video/webm", "webm", "matroska")
VIDEO_EXTS = {MP4.ext, QUICKTIME.ext, WEBM.ext}


class VideoError(ValueError):
    """Bytes that are not a video we can decode within the limits; the message is the human-readable reason."""


class VideoLimits(Protocol):
    """The bounds a decode stays within (`bot.config.VideoConfig` holds the configured ones)."""

    max_seconds: float
    max_frames: int
    max_frame_pixels: int
    max_total_pixels: int


@dataclass(frozen=True)
class DefaultVideoLimits:
    max_seconds: float = 600.0
    max_frames: int = 36_000  # ten minutes at 60 frames/s
    max_frame_pixels: int = 3840 * 2160  # 4K UHD, either orientation
    max_total_pixels: int = 10_000_000_000  # decoded pixels over the whole clip: a minute or two of CPU at most


DEFAULT_LIMITS = DefaultVideoLimits()


@dataclass(frozen=True)
class VideoInfo:
    format: VideoFormat
    width: int
    height: int
    frames: int  # decoded
    duration_s: float
    first_frame: Image.Image  # RGB


def sniff_video(head: bytes) -> VideoFormat | None:
    """The container of a file from its first bytes, or None when it is not one we read."""
    box = head[4:8]
    if box == b"ftyp":
        return QUICKTIME if head[8:12] == b"qt  " else MP4
    if box in QUICKTIME_FIRST_BOXES:
        return QUICKTIME
    if head.startswith(EBML_MAGIC):
        return WEBM
    return None


def looks_like_hls(head: bytes) -> bool:
    """An HLS playlist: the text a streaming URL (`.m3u8`) serves instead of a video file."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"#EXTM3U")


def head_of(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:SNIFF_BYTES])
    with open(source, "rb") as file:
        return file.read(SNIFF_BYTES)


def is_video(source: str | Path | bytes) -> bool:
    return sniff_video(head_of(source)) is not None


def _open(source: str | Path | bytes, video_format: VideoFormat) -> "av.container.InputContainer":
    import av

    target = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    try:
        return av.open(target, mode="r", format=video_format.demuxer)
    except av.FFmpegError as error:
        raise VideoError(f"corrupt or truncated {video_format.name} data: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    # PyAV appends the file name, which is '<none>' for bytes: keep FFmpeg's own words.
    text = getattr(error, "strerror", None) or str(error)
    return text.rstrip(".")


def _declared_seconds(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _check_frame_size(width: int, height: int, limits: VideoLimits, video_format: VideoFormat) -> None:
    if width <= 0 or height <= 0:
        raise VideoError(f"{video_format.name} video stream has no frame size")
    if width * height > limits.max_frame_pixels:
        raise VideoError(
            f"decompression bomb: video frame {width}x{height} = {width * height} pixels, over the "
            f"limit of {limits.max_frame_pixels}"
        )


def _frames(container, stream, video_format: VideoFormat, limits: VideoLimits) -> Iterator:
    """Decoded frames in order, each checked against the limits before it is handed on."""
    import av

    count = total_pixels = 0
    try:
        for frame in container.decode(stream):
            count += 1
            _check_frame_size(frame.width, frame.height, limits, video_format)
            total_pixels += frame.width * frame.height
            if count > limits.max_frames:
                raise VideoError(f"video has more than {limits.max_frames} frames (the limit)")
            if total_pixels > limits.max_total_pixels:
                raise VideoError(
                    f"decompression bomb: more than {limits.max_total_pixels} decoded pixels after {count} frames"
                )
            if frame.time is not None and frame.time > limits.max_seconds:
                raise VideoError(f"video runs longer than {limits.max_seconds:g} s (the limit)")
            yield frame
    except av.FFmpegError as error:
        raise VideoError(
            f"truncated or corrupt {video_format.name} data after {count} frames: {_reason(error)}"
        ) from None


def _video_stream(container, video_format: VideoFormat, limits: VideoLimits):
    if not container.streams.video:
        raise VideoError(f"{video_format.name} file has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threads: several frames decode at once
    _check_frame_size(stream.codec_context.width, stream.codec_context.height, limits, video_format)
    declared_s = _declared_seconds(container, stream)
    if declared_s is not None and declared_s > limits.max_seconds:
        raise VideoError(f"video is {declared_s:.1f} s long, over the limit of {limits.max_seconds:g} s")
    if stream.frames > limits.max_frames:
        raise VideoError(f"video has {stream.frames} frames, over the limit of {limits.max_frames}")
    declared_pixels = stream.frames * stream.codec_context.width * stream.codec_context.height
    if declared_pixels > limits.max_total_pixels:
        raise VideoError(
            f"decompression bomb: {stream.frames} frames of {stream.codec_context.width}x"
            f"{stream.codec_context.height} = {declared_pixels} pixels, over the limit of "
            f"{limits.max_total_pixels}"
        )
    return stream


def probe_video(source: str | Path | bytes, limits: VideoLimits = DEFAULT_LIMITS) -> VideoInfo:
    """Decode every frame under `limits` (checked on the header first, then frame by frame); VideoError if not."""
    video_format = sniff_video(head_of(source))
    if video_format is None:
        raise VideoError("not an MP4, QuickTime or WebM file")
    with _open(source, video_format) as container:
        stream = _video_stream(container, video_format, limits)
        first = None
        count = 0
        end_s = 0.0
        for frame in _frames(container, stream, video_format, limits):
            if first is None:
                first = frame.to_image()
            count += 1
            if frame.time is not None:
                end_s = max(end_s, frame.time)
        if first is None:
            raise VideoError(f"{video_format.name} file holds no decodable frame")
        # The container's sample table says how many frames it stored: fewer decoded means data is missing
        # (an edit list may hide a frame or two of a sound file).
        if stream.frames and stream.frames - count > max(2, stream.frames // 100):
            raise VideoError(
                f"truncated {video_format.name} data: decoded {count} of the {stream.frames} frames the file declares"
            )
        rate = float(stream.average_rate or 0)
        duration_s = _declared_seconds(container, stream) or (end_s + (1 / rate if rate else 0.0))
        return VideoInfo(video_format, first.width, first.height, count, round(duration_s, 3), first)


def sample_frames(
    source: str | Path | bytes, choose: Callable[[int], list[int]], limits: VideoLimits = DEFAULT_LIMITS
) -> list[Image.Image]:
    """RGB frames at the positions `choose(frame count)` picks, in order (load_rgb_frames spreads them evenly).

    The packets are listed first without decoding (cheap), which gives the exact frame count, every frame's
    time and the keyframes. Each wanted frame is then decoded from the nearest keyframe before it when that
    lies past what is already decoded (a seek), else by decoding on: a long clip costs a few GOPs, not
    every frame.
    """
    from bisect import bisect_right

    video_format = sniff_video(head_of(source))
    if video_format is None:
        raise VideoError("not an MP4, QuickTime or WebM file")
    with _open(source, video_format) as container:
        stream = _video_stream(container, video_format, limits)
        packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size]
    if not packets:
        raise VideoError(f"{video_format.name} file holds no frame")
    positions = sorted(set(choose(len(packets))))
    with _open(source, video_format) as container:
        stream = _video_stream(container, video_format, limits)
        if any(pts is None for pts, _key in packets):  # no timestamps to seek by: decode in order
            wanted = set(positions)
            return [
                frame.to_image()
                for index, frame in enumerate(_frames(container, stream, video_format, limits))
                if index in wanted
            ]
        times = sorted(pts for pts, _key in packets)
        keyframes = sorted(pts for pts, key in packets if key) or times[:1]
        picked: list[Image.Image] = []
        decoded = None
        position = None  # time of the last frame decoded
        for target in (times[index] for index in positions):
            keyframe = keyframes[max(0, bisect_right(keyframes, target) - 1)]
            if decoded is None or position is None or keyframe > position:
                container.seek(keyframe, stream=stream, backward=True)
                decoded = _frames(container, stream, video_format, limits)
            frame = next((frame for frame in decoded if frame.pts is not None and frame.pts >= target), None)
            if frame is None:
                break  # the data ends early: keep what was found
            picked.append(frame.to_image())
            position = frame.pts
        if not picked:
            raise VideoError(f"{video_format.name} file holds no decodable frame")
        return picked
