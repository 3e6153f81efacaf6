"""LIME and its superpixels: the region a model depends on is what LIME marks positive."""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from classifier.preprocess import normalize
from explain.lime import lime
from explain.superpixels import boundaries, slic
from tests.test_explain_support import one_torch_thread  # noqa: F401  (autouse fixture)

TILE = 16
TILES_PER_SIDE = 4
SIZE = TILE * TILES_PER_SIDE
# The model looks only at the 2x2 tiles in the middle.
REGION = (slice(TILE, 3 * TILE), slice(TILE, 3 * TILE))


def tiled_image() -> np.ndarray:
    """A 4x4 grid of clearly distinct flat colours, each with a faint checkerboard texture, uint8 [64, 64, 3]."""
    tiles = np.arange(TILES_PER_SIDE**2)
    hsv = np.stack([(tiles * 5 % 16) / 16.0, np.full(len(tiles), 0.8), 0.55 + 0.35 * (tiles % 2)], axis=1)
    colours = matplotlib.colors.hsv_to_rgb(hsv) * 255.0
    rgb = np.repeat(np.repeat(colours.reshape(TILES_PER_SIDE, TILES_PER_SIDE, 3), TILE, 0), TILE, 1)
    checker = ((np.indices((SIZE, SIZE)).sum(axis=0) % 2) * 2 - 1)[..., None] * 6
    return np.clip(rgb + checker, 0, 255).astype(np.uint8)


class RegionTextureModel(nn.Module):
    """Class 0's logit is the pixel-to-pixel texture energy inside REGION; nothing else matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        region = x[:, :, REGION[0], REGION[1]]
        energy = (region[..., 1:] - region[..., :-1]).abs().mean(dim=(1, 2, 3))
        return torch.stack([energy * 20.0, torch.zeros_like(energy), torch.zeros_like(energy)], dim=1)


def as_batch(rgb: np.ndarray) -> torch.Tensor:
    return normalize(Image.fromarray(rgb))[None]


def test_slic_superpixels_follow_colour_edges_and_are_connected():
    rgb = tiled_image()
    segments = slic(rgb, n_segments=TILES_PER_SIDE**2)
    tile_of_pixel = (np.arange(SIZE)[:, None] // TILE) * TILES_PER_SIDE + np.arange(SIZE)[None, :] // TILE
    for segment in np.unique(segments):
        assert len(np.unique(tile_of_pixel[segments == segment])) == 1, f"superpixel {segment} spans two tiles"
    assert segments.dtype == np.int32 and segments.min() == 0
    assert np.array_equal(np.unique(segments), np.arange(segments.max() + 1))
    assert segments.max() + 1 == TILES_PER_SIDE**2, "a tile was split"
    assert np.array_equal(boundaries(segments), boundaries(tile_of_pixel))


def test_top_positive_superpixels_cover_the_region_the_model_uses():
    explanation = lime(RegionTextureModel(), as_batch(tiled_image()), target=0, num_samples=300, n_segments=16)
    marked = explanation.regions(num_features=4)
    region_mask = np.zeros((SIZE, SIZE), dtype=bool)
    region_mask[REGION] = True
    positive = marked > 0
    assert positive[region_mask].mean() >= 0.9, "the region the model reads is not marked positive"
    assert region_mask[positive].mean() >= 0.9, "superpixels the model ignores are marked positive"
    assert explanation.fit_r2 > 0.5
    outside = np.unique(explanation.segments[~region_mask])
    inside = np.unique(explanation.segments[region_mask])
    assert np.abs(explanation.weights[outside]).max() < 0.25 * explanation.weights[inside].min()


def test_negative_evidence_is_marked_negative():
    class RegionSuppressesClass0(RegionTextureModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -super().forward(x)

    explanation = lime(RegionSuppressesClass0(), as_batch(tiled_image()), target=0, num_samples=300, n_segments=16)
    marked = explanation.regions(num_features=4)
    assert (marked[REGION] == -1).mean() >= 0.9
    assert not (marked > 0).any()


def test_same_seed_same_explanation_other_seed_other_samples():
    batch = as_batch(tiled_image())
    first = lime(RegionTextureModel(), batch, target=0, num_samples=60, seed=3, n_segments=16)
    again = lime(RegionTextureModel(), batch, target=0, num_samples=60, seed=3, n_segments=16)
    other = lime(RegionTextureModel(), batch, target=0, num_samples=60, seed=4, n_segments=16)
    assert np.array_equal(first.weights, again.weights)
    assert not np.array_equal(first.weights, other.weights)


def test_target_none_explains_the_predicted_class_and_bad_sample_counts_are_rejected():
    explanation = lime(RegionTextureModel(), as_batch(tiled_image()), num_samples=20, n_segments=16)
    assert explanation.target == 0  # the textured region makes class 0 the most probable
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        lime(RegionTextureModel(), as_batch(tiled_image()), num_samples=1)
