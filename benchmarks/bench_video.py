"""Video decoding speed: frames/s through a 10 s 720p H.264 clip, and what one clip costs next to one still.

The clip pans over a picture of the dev corpus (or a generated one) at 30 frames/s, encoded here with PyAV
(libx264: x264's default GOP of 250 frames, and a 2 s GOP as streaming services cut). Measured in this one run, median of --repeats after a warm-up, so the ratios hold on
any machine:
- validation: `probe_video` decodes every frame under the limits, as ingest does (frames/s);
- sampling: `load_rgb_frames(clip, max_frames)`, what classification, Grad-CAM and thumbnails decode;
- the same for one still, a JPEG of the clip's first frame (validate_image, load_rgb_frames).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.ingest.validate import validate_image  # noqa: E402
from classifier.inference import cpu_flags  # noqa: E402
from classifier.preprocess import load_rgb_frames  # noqa: E402
from classifier.video import probe_video  # noqa: E402

SHARED = Path(os.environ.get("ILLUSTFEED_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SIZE = (1280, 720)
FPS = 30
SECONDS = 10
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def picture() -> Image.Image:
    files = sorted((SHARED / "corpus/dev/illustration").glob("*.jpg"))
    if files:
        with Image.open(files[0]) as image:
            return image.convert("RGB")
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)).resize((1600, 900), Image.BICUBIC)


def encode_clip(source: Image.Image, gop: int | None = None) -> bytes:
    import av

    width, height = SIZE
    scaled = source.resize((round(width * 1.5), height), Image.BICUBIC)
    pixels = np.asarray(scaled)
    frames = FPS * SECONDS
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", **({"g": str(gop)} if gop else {})}
        for index in range(frames):
            left = round((scaled.width - width) * index / (frames - 1))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[:, left : left + width]), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def median_seconds(action, repeats: int) -> float:
    action()  # warm-up: codec set-up, page cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-frames", type=int, default=4, help="frames sampled per clip ([classifier] max_frames)")
    args = parser.parse_args()

    source = picture()
    clip = encode_clip(source)
    short_gop_clip = encode_clip(source, gop=2 * FPS)
    first = load_rgb_frames(clip, max_frames=1)[0]
    buffer = io.BytesIO()
    first.save(buffer, "JPEG", quality=90)
    still = buffer.getvalue()

    info = probe_video(clip)
    validate_clip_s = median_seconds(lambda: validate_image(clip, max_pixels=80_000_000), args.repeats)
    validate_still_s = median_seconds(lambda: validate_image(still, max_pixels=80_000_000), args.repeats)
    sample_clip_s = median_seconds(lambda: load_rgb_frames(clip, max_frames=args.max_frames), args.repeats)
    sample_still_s = median_seconds(lambda: load_rgb_frames(still, max_frames=1), args.repeats)
    sample_short_gop_s = median_seconds(
        lambda: load_rgb_frames(short_gop_clip, max_frames=args.max_frames), args.repeats
    )
    flags = cpu_flags()
    print(
        json.dumps(
            {
                "cpu_count": os.cpu_count(),
                "cpu_flags": [flag for flag in REPORTED_FLAGS if flag in flags],
                "clip": {
                    "width": info.width,
                    "height": info.height,
                    "frames": info.frames,
                    "seconds": info.duration_s,
                    "bytes": len(clip),
                },
                "still_bytes": len(still),
                "validate_clip_s": round(validate_clip_s, 3),
                "decode_frames_per_s": round(info.frames / validate_clip_s, 1),
                "validate_still_ms": round(validate_still_s * 1000, 1),
                "validate_clip_over_still": round(validate_clip_s / validate_still_s, 1),
                "sample_frames": args.max_frames,
                "sample_clip_s": round(sample_clip_s, 3),
                "sample_still_ms": round(sample_still_s * 1000, 1),
                "sample_clip_over_still": round(sample_clip_s / sample_still_s, 1),
                "sample_clip_2s_gop_s": round(sample_short_gop_s, 3),
                "sample_clip_2s_gop_over_still": round(sample_short_gop_s / sample_still_s, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
