"""Overlays: valid PNG/GIF files of the documented size, heatmap and LIME colours where they belong."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from classifier import LABELS, build_vgg16
from classifier.preprocess import normalize
from explain import ExplainError, LimeExplanation
from explain.media import explain_frames, gradcam_overlay
from explain.overlay import (
    DISPLAY_VIEW_SIDE,
    PANEL_ROW_HEIGHT,
    VIEW_GAP,
    Call,
    EncodedImage,
    colourise,
    draw_panel,
    encode,
    encode_gif,
    encode_mp4,
    paint_heatmap,
    paint_lime,
)
from tests.test_explain_support import one_torch_thread  # noqa: F401  (autouse fixture)
from tests.videogen import animation_frames

PANEL_HEIGHT = PANEL_ROW_HEIGHT * (len(LABELS) + 1) + 6


@pytest.fixture(scope="module")
def small_vgg() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vgg16(num_classes=len(LABELS), width=1 / 32).eval()


def views(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 64, 64, generator=generator)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_still_overlay_is_a_png_of_the_view_size_plus_panel(small_vgg):
    overlay = gradcam_overlay(small_vgg, [views(1, 0)], probabilities=[0.45, 0.40, 0.15])
    image = decoded(overlay.data)
    assert overlay.ext == "png" and overlay.mime == "image/png" and image.format == "PNG"
    assert image.size == (DISPLAY_VIEW_SIDE, DISPLAY_VIEW_SIDE + PANEL_HEIGHT)


def test_animated_overlay_is_the_smaller_of_gif_and_mp4_with_one_frame_per_media_frame(small_vgg):
    overlay = gradcam_overlay(small_vgg, [views(1, seed) for seed in range(3)], probabilities=[0.3, 0.5, 0.2])
    kind, frames = animation_frames(overlay.data)
    assert overlay.ext == kind.lower() and len(frames) == 3
    # MP4 sides are padded to even numbers.
    assert frames[0].width - DISPLAY_VIEW_SIDE in (0, 1) and frames[0].height - (DISPLAY_VIEW_SIDE + PANEL_HEIGHT) in (
        0,
        1,
    )
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[2])), "frames must differ: each has its own map"


@pytest.mark.parametrize("flat", [False, True])
def test_encode_keeps_the_smaller_of_a_looping_gif_and_an_mp4(flat):
    if flat:  # two small flat frames: a GIF is a few bytes, an MP4 has a header of a kilobyte or more
        frames = [Image.new("RGB", (16, 15), (40 * index, 0, 0)) for index in range(2)]
    else:  # smooth gradients, as heatmaps are: the MP4 is smaller
        ramp = np.linspace(0, 255, 300, dtype=np.float32)
        frames = [
            Image.fromarray(np.stack([np.add.outer(ramp, ramp) / 2 + shift] * 3, axis=-1).clip(0, 255).astype(np.uint8))
            for shift in (0, 40, 80)
        ]
    gif, mp4 = encode_gif(frames), encode_mp4(frames)
    overlay = encode(frames)
    assert overlay == (EncodedImage(mp4, "mp4") if len(mp4) < len(gif) else EncodedImage(gif, "gif"))
    assert overlay.ext == ("gif" if flat else "mp4")
    with Image.open(io.BytesIO(gif)) as image:
        assert image.format == "GIF" and image.n_frames == len(frames) and image.info.get("loop") == 0
    kind, decoded_frames = animation_frames(mp4)
    assert kind == "MP4" and len(decoded_frames) == len(frames)
    assert decoded_frames[0].size == (frames[0].width + frames[0].width % 2, frames[0].height + frames[0].height % 2)


def test_each_frame_shows_its_own_probabilities_and_the_media_call(small_vgg):
    per_frame = [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]
    overlay = gradcam_overlay(
        small_vgg, [views(1, 0), views(1, 0)], probabilities=[0.5, 0.425, 0.075], frame_probabilities=per_frame
    )
    kind, frames = animation_frames(overlay.data)
    # One caption row more than a still's panel; the same frame with other probabilities shows other bars.
    assert frames[0].height - (DISPLAY_VIEW_SIDE + PANEL_HEIGHT + PANEL_ROW_HEIGHT) in (0, 1)
    panels = [
        np.asarray(frame.crop((0, DISPLAY_VIEW_SIDE, DISPLAY_VIEW_SIDE, frame.height)), np.float32) for frame in frames
    ]
    assert np.abs(panels[0] - panels[1]).mean() > 2
    with pytest.raises(ExplainError, match="probabilities for 1 frames"):
        gradcam_overlay(small_vgg, [views(1, 0), views(1, 0)], [0.5, 0.4, 0.1], frame_probabilities=per_frame[:1])


def test_several_views_of_a_frame_are_shown_side_by_side(small_vgg):
    overlay = explain_frames(small_vgg, [views(2, 0)], probabilities=[0.2, 0.7, 0.1], method="guided-gradcam")
    assert decoded(overlay.data).size == (2 * DISPLAY_VIEW_SIDE + VIEW_GAP, DISPLAY_VIEW_SIDE + PANEL_HEIGHT)


def test_lime_overlay_renders(small_vgg):
    overlay = explain_frames(
        small_vgg, [views(1, 0)], [0.2, 0.7, 0.1], method="lime", method_options={"num_samples": 8, "n_segments": 9}
    )
    assert decoded(overlay.data).size == (DISPLAY_VIEW_SIDE, DISPLAY_VIEW_SIDE + PANEL_HEIGHT)


def test_heatmap_colours_follow_the_map():
    grey = Image.new("RGB", (100, 100), (128, 128, 128))
    heatmap = np.zeros((50, 50), dtype=np.float32)
    heatmap[:, :20] = 1.0
    painted = np.asarray(paint_heatmap(grey, heatmap)).astype(int)
    hot, cold = colourise(np.array([[1.0]]))[0, 0].astype(int), colourise(np.array([[0.0]]))[0, 0].astype(int)
    assert np.abs(painted[50, 10] - (128 + hot) / 2).max() <= 2
    assert np.abs(painted[50, 90] - (128 + cold) / 2).max() <= 2


def test_lime_regions_are_green_for_red_against_with_yellow_boundaries():
    segments = np.zeros((40, 40), dtype=np.int32)
    segments[:, 20:] = 1
    segments[20:, :20] = 2
    explanation = LimeExplanation(segments, np.array([0.3, -0.2, 0.0]), intercept=0.1, fit_r2=0.9, target=0)
    painted = np.asarray(paint_lime(Image.new("RGB", (40, 40), (100, 100, 100)), explanation)).astype(int)
    support, against, neutral = painted[5, 5], painted[10, 30], painted[35, 5]
    assert support[1] > 120 and support[0] < 80, f"supporting superpixel not green: {support}"
    assert against[0] > 120 and against[1] < 80, f"opposing superpixel not red: {against}"
    assert list(neutral) == [100, 100, 100]
    assert list(painted[5, 19]) == [255, 255, 0] and list(painted[19, 5]) == [255, 255, 0]


def longest_run(row: np.ndarray, colour: tuple[int, int, int]) -> int:
    longest = current = 0
    for matches in (row == colour).all(axis=1):
        current = current + 1 if matches else 0
        longest = max(longest, current)
    return longest


def test_panel_bars_are_as_long_as_the_probabilities():
    panel = np.asarray(draw_panel(400, Call("Grad-CAM", LABELS, (0.6, 0.3, 0.1), target=0)))
    predicted_colour, other_colour = (255, 210, 80), (200, 200, 200)
    bar_rows = [panel[4 + row * PANEL_ROW_HEIGHT + 9] for row in range(1, len(LABELS) + 1)]
    lengths = [longest_run(bar_rows[0], predicted_colour)] + [longest_run(r, other_colour) for r in bar_rows[1:]]
    assert lengths[0] / lengths[1] == pytest.approx(2.0, rel=0.05)
    assert lengths[0] / lengths[2] == pytest.approx(6.0, rel=0.1)


def test_inconsistent_arguments_are_rejected(small_vgg):
    with pytest.raises(ExplainError, match="2 probabilities for 3 labels"):
        gradcam_overlay(small_vgg, [views(1, 0)], probabilities=[0.5, 0.5])
    with pytest.raises(ExplainError, match="no frames"):
        gradcam_overlay(small_vgg, [], probabilities=[0.5, 0.3, 0.2])
    with pytest.raises(ExplainError, match="unknown explanation method 'shap'"):
        explain_frames(small_vgg, [views(1, 0)], [0.5, 0.3, 0.2], method="shap")


def test_views_made_by_the_preprocessing_show_the_image_they_came_from(small_vgg):
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    overlay = gradcam_overlay(small_vgg, [normalize(picture)[None]], probabilities=[0.5, 0.3, 0.2])
    shown = np.asarray(decoded(overlay.data).convert("RGB"))[:DISPLAY_VIEW_SIDE].astype(int)
    # Half the heatmap blended over red: red stays the strongest channel everywhere.
    assert (shown[..., 0] > shown[..., 2]).mean() > 0.95
