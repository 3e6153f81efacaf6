"""Overlays for reviewers: each explanation drawn over the view the network saw, a panel with the call.

Maps are drawn over the un-normalised input view rather than mapped back onto the original file: the
classifier's framing (centre crop, padded square, several tiles of a tall screenshot) decides what each
view holds, and drawing on the view itself is exact for every framing. A frame with several views shows
them side by side; several frames become an animation: a looping GIF, or an H.264 MP4 when that is smaller
(it nearly always is: the colour-map gradients cost a GIF palette dearly).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from explain.base import unnormalised_rgb
from explain.lime import LimeExplanation
from explain.superpixels import boundaries

HEATMAP_COLOURMAP = "inferno"  # perceptually uniform, and still ordered when printed in grey
HEATMAP_ALPHA = 0.5
DISPLAY_VIEW_SIDE = 448  # 224 px views shown at twice their size: maps stay legible, files stay small
VIEW_GAP = 8
PANEL_MIN_WIDTH = 360
PANEL_ROW_HEIGHT = 22
BACKGROUND = (24, 24, 24)
FRAME_MS = 600  # each frame of an animated overlay
LIME_SUPPORT = np.array([0, 200, 0], dtype=np.float32)  # green: superpixels that raise the class
LIME_AGAINST = np.array([220, 0, 0], dtype=np.float32)  # red: superpixels that lower it
LIME_TINT = 0.5
LIME_BOUNDARY = np.array([255, 255, 0], dtype=np.uint8)  # yellow, as skimage's mark_boundaries draws them

Explanation = np.ndarray | LimeExplanation  # a heatmap [H, W] in [0, 1], or LIME superpixel weights


@dataclass(frozen=True)
class EncodedImage:
    """An encoded overlay, ready for `store.derived.put(overlay.data, overlay.ext)`."""

    data: bytes
    ext: str  # "png" for one frame; "gif" or "mp4" (whichever is smaller) for animated media

    @property
    def mime(self) -> str:
        return "video/mp4" if self.ext == "mp4" else f"image/{self.ext}"


@dataclass(frozen=True)
class Call:
    """What the panel states: the method, the class explained, the probability of each label."""

    method: str
    labels: Sequence[str]
    probabilities: Sequence[float]  # of the frame shown
    target: int
    caption: str | None = None  # a line under the bars (which frame, and the whole media's call)


def colourise(heatmap: np.ndarray, colourmap: str = HEATMAP_COLOURMAP) -> np.ndarray:
    """[H, W] in [0, 1] -> uint8 RGB [H, W, 3] through a matplotlib colour map."""
    rgba = matplotlib.colormaps[colourmap](np.clip(heatmap, 0.0, 1.0))
    return (rgba[..., :3] * 255.0).round().astype(np.uint8)


def display_view(view: torch.Tensor) -> Image.Image:
    """The view [3, H, W] as the RGB image the network saw, scaled to DISPLAY_VIEW_SIDE on its long side."""
    seen = Image.fromarray(unnormalised_rgb(view))
    scale = DISPLAY_VIEW_SIDE / max(seen.size)
    return seen.resize((round(seen.width * scale), round(seen.height * scale)), Image.BICUBIC)


def paint_heatmap(shown: Image.Image, heatmap: np.ndarray) -> Image.Image:
    scaled = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(shown.size, Image.BILINEAR)
    return Image.blend(shown, Image.fromarray(colourise(np.asarray(scaled))), HEATMAP_ALPHA)


def paint_lime(shown: Image.Image, explanation: LimeExplanation) -> Image.Image:
    """Top superpixels tinted green (for the class) or red (against it); every boundary in yellow."""
    segments = np.asarray(Image.fromarray(explanation.segments).resize(shown.size, Image.NEAREST))
    signs = explanation.segment_signs()[segments][..., None]
    pixels = np.asarray(shown, dtype=np.float32)
    pixels = np.where(signs > 0, (1 - LIME_TINT) * pixels + LIME_TINT * LIME_SUPPORT, pixels)
    pixels = np.where(signs < 0, (1 - LIME_TINT) * pixels + LIME_TINT * LIME_AGAINST, pixels)
    painted = pixels.round().astype(np.uint8)
    painted[boundaries(segments)] = LIME_BOUNDARY
    return Image.fromarray(painted)


def paint(view: torch.Tensor, explanation: Explanation) -> Image.Image:
    """One view with its explanation drawn over it."""
    shown = display_view(view)
    if isinstance(explanation, LimeExplanation):
        return paint_lime(shown, explanation)
    return paint_heatmap(shown, explanation)


def draw_panel(width: int, call: Call) -> Image.Image:
    """A title line (method, class explained), then one bar per label with its probability."""
    font = ImageFont.load_default(size=14)
    rows = len(call.labels) + 1 + (call.caption is not None)
    panel = Image.new("RGB", (width, PANEL_ROW_HEIGHT * rows + 6), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    predicted = int(np.argmax(call.probabilities))
    draw.text((8, 4), f"{call.method}: evidence for {call.labels[call.target]}", fill=(255, 255, 255), font=font)
    bar_left = 16 + int(max(draw.textlength(label, font=font) for label in call.labels))
    bar_right = width - 56
    for row, (label, probability) in enumerate(zip(call.labels, call.probabilities), start=1):
        top = 4 + row * PANEL_ROW_HEIGHT
        colour = (255, 210, 80) if row - 1 == predicted else (200, 200, 200)
        draw.text((8, top), label, fill=colour, font=font)
        draw.rectangle((bar_left, top + 3, bar_right, top + 15), outline=(90, 90, 90))
        filled = bar_left + round((bar_right - bar_left) * float(probability))
        if filled > bar_left:
            draw.rectangle((bar_left, top + 3, filled, top + 15), fill=colour)
        draw.text((bar_right + 6, top), f"{float(probability):.0%}", fill=colour, font=font)
    if call.caption is not None:
        draw.text((8, 4 + (len(call.labels) + 1) * PANEL_ROW_HEIGHT), call.caption, fill=(200, 200, 200), font=font)
    return panel


def compose(painted_views: Sequence[Image.Image], call: Call) -> Image.Image:
    """Painted views side by side, the panel below."""
    views_width = sum(view.width for view in painted_views) + VIEW_GAP * (len(painted_views) - 1)
    views_height = max(view.height for view in painted_views)
    width = max(views_width, PANEL_MIN_WIDTH)
    panel = draw_panel(width, call)
    canvas = Image.new("RGB", (width, views_height + panel.height), BACKGROUND)
    left = (width - views_width) // 2
    for view in painted_views:
        canvas.paste(view, (left, 0))
        left += view.width + VIEW_GAP
    canvas.paste(panel, (0, views_height))
    return canvas


def encode_gif(frames: Sequence[Image.Image]) -> bytes:
    """A looping animated GIF, each frame shown FRAME_MS."""
    buffer = io.BytesIO()
    # One adaptive palette per frame keeps the colour map's gradient smooth in every frame.
    paletted = [frame.quantize(colors=256, method=Image.Quantize.MEDIANCUT) for frame in frames]
    paletted[0].save(buffer, format="GIF", save_all=True, append_images=paletted[1:], duration=FRAME_MS, loop=0)
    return buffer.getvalue()


def encode_mp4(frames: Sequence[Image.Image]) -> bytes:
    """An H.264 MP4 (yuv420p, sides padded to even), each frame shown FRAME_MS; players loop it."""
    import av

    width, height = frames[0].width + frames[0].width % 2, frames[0].height + frames[0].height % 2
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=Fraction(1000, FRAME_MS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20", "tune": "stillimage"}  # text and bars stay crisp
        for frame in frames:
            canvas = Image.new("RGB", (width, height), BACKGROUND)
            canvas.paste(frame, (0, 0))
            for packet in stream.encode(av.VideoFrame.from_image(canvas)):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def encode(frames: Sequence[Image.Image]) -> EncodedImage:
    """PNG for one frame; for several, a looping GIF or an MP4, whichever is smaller."""
    if not frames:
        raise ValueError("no frames to encode")
    if len(frames) == 1:
        buffer = io.BytesIO()
        # zlib's default level, not optimize=True: that tries every filter at level 9, 5-6x the time for
        # files 3-7% smaller, and the encoding ran for every borderline call of a classify or retrain re-score.
        frames[0].save(buffer, format="PNG")
        return EncodedImage(buffer.getvalue(), "png")
    gif, mp4 = encode_gif(frames), encode_mp4(frames)
    return EncodedImage(mp4, "mp4") if len(mp4) < len(gif) else EncodedImage(gif, "gif")
