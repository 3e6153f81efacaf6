"""Overlays for reviewers: an explanation drawn over the original frame, a panel with the call, PNG or GIF.

The maps are computed on the 224 px centre crop the classifier sees (`classifier.preprocess`); they are
drawn over that region of the full frame, and the part the network never saw is dimmed.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from classifier.preprocess import CROP_SIZE, RESIZE_SHORT_SIDE
from explain.lime import LimeExplanation
from explain.superpixels import boundaries

HEATMAP_COLOURMAP = "inferno"  # perceptually uniform and readable in greyscale
HEATMAP_ALPHA = 0.55
DISPLAY_LONG_SIDE = 512  # the maps have 224 px of detail; larger overlays only cost storage
PANEL_MIN_WIDTH = 320
PANEL_ROW_HEIGHT = 22
OUTSIDE_CROP_DIMMING = 0.45
GIF_FRAME_MS = 600
LIME_SUPPORT = np.array([0, 200, 0], dtype=np.float32)  # green: superpixels that support the class
LIME_AGAINST = np.array([220, 0, 0], dtype=np.float32)  # red: superpixels that argue against it
LIME_TINT = 0.5
LIME_BOUNDARY = np.array([255, 255, 0], dtype=np.uint8)  # yellow, as skimage's mark_boundaries

Explanation = np.ndarray | LimeExplanation  # a heatmap [H, W] in [0, 1], or LIME superpixel weights


@dataclass(frozen=True)
class EncodedImage:
    """An encoded overlay ready for `store.derived.put(data, ext)`."""

    data: bytes
    ext: str  # "png" for one frame, "gif" for animated media

    @property
    def mime(self) -> str:
        return f"image/{self.ext}"


@dataclass(frozen=True)
class Call:
    """What the panel states: the class explained, and the model's probabilities for each label."""

    method: str
    labels: Sequence[str]
    probabilities: Sequence[float]
    target: int


def eval_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in frame pixels of the region Resize(256) + CenterCrop(224) keeps."""
    if width <= height:
        resized_width, resized_height = RESIZE_SHORT_SIDE, int(RESIZE_SHORT_SIDE * height / width)
    else:
        resized_width, resized_height = int(RESIZE_SHORT_SIDE * width / height), RESIZE_SHORT_SIDE
    left = int(round((resized_width - CROP_SIZE) / 2.0))
    top = int(round((resized_height - CROP_SIZE) / 2.0))
    scale_x, scale_y = width / resized_width, height / resized_height
    return (left * scale_x, top * scale_y, (left + CROP_SIZE) * scale_x, (top + CROP_SIZE) * scale_y)


def colourise(heatmap: np.ndarray, colourmap: str = HEATMAP_COLOURMAP) -> np.ndarray:
    """[H, W] in [0, 1] -> uint8 RGB [H, W, 3] through a matplotlib colour map."""
    rgba = matplotlib.colormaps[colourmap](np.clip(heatmap, 0.0, 1.0))
    return (rgba[..., :3] * 255.0).round().astype(np.uint8)


def paint_heatmap(region: Image.Image, heatmap: np.ndarray) -> Image.Image:
    scaled = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(region.size, Image.BILINEAR)
    colours = Image.fromarray(colourise(np.asarray(scaled)))
    return Image.blend(region, colours, HEATMAP_ALPHA)


def paint_lime(region: Image.Image, explanation: LimeExplanation) -> Image.Image:
    """Top superpixels tinted green (for) or red (against), all superpixel boundaries in yellow."""
    segments = np.asarray(Image.fromarray(explanation.segments).resize(region.size, Image.NEAREST))
    signs = np.asarray(Image.fromarray(explanation.regions()).resize(region.size, Image.NEAREST))[..., None]
    pixels = np.asarray(region, dtype=np.float32)
    pixels = np.where(signs > 0, (1 - LIME_TINT) * pixels + LIME_TINT * LIME_SUPPORT, pixels)
    pixels = np.where(signs < 0, (1 - LIME_TINT) * pixels + LIME_TINT * LIME_AGAINST, pixels)
    painted = pixels.round().astype(np.uint8)
    painted[boundaries(segments)] = LIME_BOUNDARY
    return Image.fromarray(painted)


def display_frame(frame: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The frame scaled to DISPLAY_LONG_SIDE on its long side, and the classifier's crop box on it."""
    scale = DISPLAY_LONG_SIDE / max(frame.size)
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
    shown = frame.convert("RGB").resize(size, Image.BICUBIC)
    left, top, right, bottom = eval_crop_box(*frame.size)
    box = (round(left * scale), round(top * scale), round(right * scale), round(bottom * scale))
    box = (max(0, box[0]), max(0, box[1]), min(size[0], max(box[0] + 1, box[2])), min(size[1], max(box[1] + 1, box[3])))
    return shown, box


def draw_panel(width: int, call: Call) -> Image.Image:
    """Title line (method and class explained) and one bar per label with its probability."""
    font = ImageFont.load_default(size=14)
    height = PANEL_ROW_HEIGHT * (len(call.labels) + 1) + 6
    panel = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(panel)
    predicted = int(np.argmax(call.probabilities))
    draw.text((8, 4), f"{call.method}: evidence for {call.labels[call.target]}", fill=(255, 255, 255), font=font)
    name_width = 8 + max(draw.textlength(label, font=font) for label in call.labels) + 8
    bar_left, bar_right = int(name_width), width - 60
    for row, (label, probability) in enumerate(zip(call.labels, call.probabilities), start=1):
        top = 4 + row * PANEL_ROW_HEIGHT
        colour = (255, 210, 80) if row - 1 == predicted else (200, 200, 200)
        draw.text((8, top), label, fill=colour, font=font)
        draw.rectangle((bar_left, top + 3, bar_right, top + 15), outline=(90, 90, 90))
        filled = bar_left + round((bar_right - bar_left) * float(probability))
        if filled > bar_left:
            draw.rectangle((bar_left, top + 3, filled, top + 15), fill=colour)
        draw.text((bar_right + 6, top), f"{float(probability):.0%}", fill=colour, font=font)
    return panel


def render_frame(frame: Image.Image, explanation: Explanation, call: Call) -> Image.Image:
    """One frame with the explanation over the classifier's crop, the rest dimmed, the panel below."""
    shown, box = display_frame(frame)
    region = shown.crop(box)
    painted = paint_lime(region, explanation) if isinstance(explanation, LimeExplanation) else paint_heatmap(region, explanation)
    dimmed = Image.blend(shown, Image.new("RGB", shown.size, (0, 0, 0)), OUTSIDE_CROP_DIMMING)
    dimmed.paste(painted, box[:2])
    width = max(shown.width, PANEL_MIN_WIDTH)
    panel = draw_panel(width, call)
    canvas = Image.new("RGB", (width, shown.height + panel.height), (24, 24, 24))
    canvas.paste(dimmed, ((width - shown.width) // 2, 0))
    canvas.paste(panel, (0, shown.height))
    return canvas


def encode(frames: Sequence[Image.Image]) -> EncodedImage:
    """PNG for one frame; a looping animated GIF for several."""
    if not frames:
        raise ValueError("no frames to encode")
    buffer = io.BytesIO()
    if len(frames) == 1:
        frames[0].save(buffer, format="PNG", optimize=True)
        return EncodedImage(buffer.getvalue(), "png")
    # One adaptive palette per frame keeps the colour map's gradient smooth in every frame.
    paletted = [f.quantize(colors=256, method=Image.Quantize.MEDIANCUT) for f in frames]
    paletted[0].save(buffer, format="GIF", save_all=True, append_images=paletted[1:], duration=GIF_FRAME_MS, loop=0)
    return EncodedImage(buffer.getvalue(), "gif")
