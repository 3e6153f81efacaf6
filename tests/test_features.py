"""Feature specs, image framing into views, and the pooled multi-layer extractor (reduced-width trunk)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.features import (
    IMAGE_STATS,
    NEUTRAL_RGB,
    FeatureExtractor,
    FeatureSpec,
    FeatureSpecError,
    aggregate_views,
    image_vectors,
    image_views,
    view_statistics,
)
from classifier.preprocess import IMAGENET_MEAN, IMAGENET_STD, imagenet_eval_tensor
from classifier.vgg import make_features


def two_colour_image(width: int, height: int, first=(255, 0, 0), second=(0, 0, 255)) -> Image.Image:
    """First half (along the long side) `first`, second half `second`."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if height >= width:
        pixels[: height // 2], pixels[height // 2 :] = first, second
    else:
        pixels[:, : width // 2], pixels[:, width // 2 :] = first, second
    return Image.fromarray(pixels, "RGB")


def denormalised_rgb(view: torch.Tensor) -> np.ndarray:
    pixels = view.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(pixels * 255.0, 0, 255)


@pytest.fixture(scope="module")
def small_trunk() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return make_features(width=0.125).eval()


def test_spec_round_trips_through_json():
    spec = FeatureSpec(layers=(15, 22, 29), pooling=("max",), framing="multi_view", image_size=192)
    restored = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec
    assert restored.layers == (15, 22, 29) and isinstance(restored.layers, tuple)


def test_from_dict_rejects_unknown_keys_by_name():
    data = FeatureSpec().to_dict() | {"colour_space": "lab"}
    with pytest.raises(FeatureSpecError, match="colour_space"):
        FeatureSpec.from_dict(data)


@pytest.mark.parametrize(
    "settings, problem",
    [
        ({"backbone": "resnet50"}, "resnet50"),
        ({"pooling": ("avg", "median")}, "median"),
        ({"framing": "stretch"}, "stretch"),
        ({"layers": ()}, "at least one"),
        ({"layers": (29, 22)}, "ascending"),
        ({"image_size": 8}, "image_size"),
        ({"stats": ("flat", "sharpness")}, "sharpness"),
        ({"stats": ("noise", "noise")}, "distinct"),
        ({"stats": "noise"}, "string"),
    ],
)
def test_invalid_specs_name_the_problem(settings, problem):
    with pytest.raises(FeatureSpecError, match=problem):
        FeatureSpec(**settings)


def test_center_crop_framing_is_the_torchvision_eval_recipe():
    image = two_colour_image(300, 500)
    views = image_views(image, FeatureSpec(framing="center_crop"))
    assert views.shape == (1, 3, 224, 224)
    assert torch.equal(views[0], imagenet_eval_tensor(image))


def test_pad_square_keeps_the_whole_tall_image_and_pads_with_neutral_colour():
    image = two_colour_image(90, 195)  # a 9:19.5 phone screenshot
    views = image_views(image, FeatureSpec(framing="pad_square", image_size=64))
    assert views.shape == (1, 3, 64, 64)
    pixels = denormalised_rgb(views[0])
    assert np.allclose(pixels[32, 2], NEUTRAL_RGB, atol=1.5)  # left padding
    assert pixels[3, 32, 0] > 200 and pixels[3, 32, 2] < 50  # top of the image still there (red)
    assert pixels[60, 32, 2] > 200 and pixels[60, 32, 0] < 50  # bottom still there (blue)


def test_multi_view_tiles_a_tall_screenshot_end_to_end():
    image = two_colour_image(90, 195)
    views = image_views(image, FeatureSpec(framing="multi_view", image_size=64))
    assert views.shape == (4, 3, 64, 64)  # whole image + 3 tiles for aspect 2.17
    first_tile, last_tile = denormalised_rgb(views[1]), denormalised_rgb(views[3])
    assert (first_tile[..., 0] > 200).mean() > 0.95  # top tile is all red
    assert (last_tile[..., 2] > 200).mean() > 0.95  # bottom tile is all blue


def test_multi_view_keeps_near_square_images_whole():
    views = image_views(two_colour_image(110, 100), FeatureSpec(framing="multi_view", image_size=64))
    assert views.shape == (1, 3, 64, 64)


def test_views_accept_non_rgb_modes():
    rgba = Image.new("RGBA", (80, 40), (0, 0, 0, 0))
    views = image_views(rgba, FeatureSpec(framing="pad_square", image_size=64))
    assert np.allclose(denormalised_rgb(views[0])[32, 32], (255, 255, 255), atol=1.5)  # alpha on white


def test_aggregate_views_averages_and_rejects_bad_shapes():
    vectors = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.equal(aggregate_views(vectors), torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        aggregate_views(torch.zeros(3))


def test_extractor_pools_the_requested_layers(small_trunk):
    spec = FeatureSpec(layers=(22, 29), pooling=("avg", "max"), image_size=64)
    extractor = FeatureExtractor(small_trunk, spec)
    assert extractor.dim == (64 + 64) * 2  # 512 * 0.125 channels at conv4_3 and conv5_3
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        vectors = extractor(x)
        conv4 = small_trunk[:23](x.clone())
        conv5 = small_trunk[:30](x.clone())
    assert vectors.shape == (2, extractor.dim)
    expected_avg4 = torch.nn.functional.normalize(conv4.mean(dim=(2, 3)), dim=1)
    expected_max5 = torch.nn.functional.normalize(conv5.amax(dim=(2, 3)), dim=1)
    assert torch.allclose(vectors[:, :64], expected_avg4, atol=1e-5)
    assert torch.allclose(vectors[:, 192:], expected_max5, atol=1e-5)
    block_norms = vectors.reshape(2, 4, 64).norm(dim=2)
    assert torch.allclose(block_norms, torch.ones(2, 4), atol=1e-5)


def test_extractor_stops_at_the_deepest_requested_layer(small_trunk):
    calls: list[str] = []
    handles = [
        small_trunk[index].register_forward_hook(lambda *_, name=str(index): calls.append(name)) for index in (22, 29)
    ]
    try:
        with torch.no_grad():
            FeatureExtractor(small_trunk, FeatureSpec(layers=(22,), image_size=64))(torch.randn(1, 3, 64, 64))
            assert calls == ["22"]
            FeatureExtractor(small_trunk, FeatureSpec(layers=(29,), image_size=64))(torch.randn(1, 3, 64, 64))
            assert calls == ["22", "22", "29"]  # features.29 (the Grad-CAM layer) runs when asked for
    finally:
        for handle in handles:
            handle.remove()


def test_extractor_keeps_torchvision_names(small_trunk):
    extractor = FeatureExtractor(small_trunk, FeatureSpec(image_size=64))
    names = dict(extractor.named_modules())
    assert names["features.29"] is small_trunk[29]
    assert "features.28.weight" in extractor.state_dict()


def test_extractor_rejects_layers_beyond_the_trunk(small_trunk):
    with pytest.raises(FeatureSpecError, match="31"):
        FeatureExtractor(small_trunk[:30], FeatureSpec(layers=(22, 31)))


def test_image_vectors_aggregates_each_images_views(small_trunk):
    spec = FeatureSpec(framing="multi_view", image_size=64)
    extractor = FeatureExtractor(small_trunk, spec)
    images = [two_colour_image(90, 195), two_colour_image(100, 100), two_colour_image(200, 90)]
    vectors = image_vectors(extractor, images, batch_views=3)
    assert vectors.shape == (3, extractor.dim)
    with torch.no_grad():
        expected_tall = aggregate_views(extractor(image_views(images[0], spec)))
    assert torch.allclose(vectors[0], expected_tall, atol=1e-5)
    assert image_vectors(extractor, []).shape == (0, extractor.dim)


# --- pixel statistics (spec.stats) ---------------------------------------------------------------------


def flat_colour_image(size: int = 240) -> Image.Image:
    """Clip-art-like: three exact flat colours with hard edges."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[: size // 2] = (230, 40, 40)
    pixels[size // 2 :] = (30, 40, 200)
    pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (255, 255, 255)
    return Image.fromarray(pixels, "RGB")


def noisy_photo_like_image(size: int = 240, seed: int = 0) -> Image.Image:
    """Camera-like: smooth colour ramps plus per-pixel sensor noise."""
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float64)
    ramps = np.stack([columns * 0.6 + 40, rows * 0.5 + 60, (rows + columns) * 0.3 + 30], axis=-1)
    noise = np.random.default_rng(seed).normal(0.0, 5.0, ramps.shape)
    return Image.fromarray(np.clip(ramps + noise, 0, 255).astype(np.uint8), "RGB")


def statistics_of(image: Image.Image, spec: FeatureSpec) -> dict[str, float]:
    values = view_statistics(image_views(image, spec), spec.stats).mean(dim=0)
    return dict(zip(spec.stats, values.tolist()))


def test_old_spec_dicts_without_stats_still_load_and_serialise_unchanged():
    stored = {
        "backbone": "vgg16",
        "layers": [15, 22, 29],
        "pooling": ["avg", "max"],
        "framing": "multi_view",
        "image_size": 224,
    }
    spec = FeatureSpec.from_dict(stored)
    assert spec.stats == ()
    # No `stats` key for a spec without statistics: its JSON, and so the cached-vector key, is as before.
    assert spec.to_dict() == stored
    with_stats = FeatureSpec.from_dict(stored | {"stats": ["flat", "noise"]})
    assert with_stats.stats == ("flat", "noise")
    assert FeatureSpec.from_dict(json.loads(json.dumps(with_stats.to_dict()))) == with_stats


def test_stats_separate_flat_digital_colour_from_camera_noise():
    spec = FeatureSpec(framing="multi_view", stats=IMAGE_STATS)
    flat = statistics_of(flat_colour_image(), spec)
    noisy = statistics_of(noisy_photo_like_image(), spec)
    assert flat["flat"] > 0.9 and noisy["flat"] < 0.1
    assert flat["noise"] < 0.2 < 0.5 < noisy["noise"]
    assert flat["colours"] < noisy["colours"]
    assert flat["edges"] > 0.5 > noisy["edges"]
    assert flat["saturation"] > noisy["saturation"]


def test_stats_ignore_the_padding_of_a_wide_image():
    spec = FeatureSpec(framing="pad_square", stats=("flat", "noise"))
    square = statistics_of(noisy_photo_like_image(240), spec)
    wide = statistics_of(noisy_photo_like_image(240).crop((0, 0, 240, 100)), spec)
    # Half the padded view is neutral padding, which is perfectly flat; it must not count.
    assert wide["flat"] < 0.1
    assert abs(wide["noise"] - square["noise"]) < 0.15


def test_extractor_appends_stats_columns_without_gradient(small_trunk):
    plain = FeatureExtractor(small_trunk, FeatureSpec(image_size=64))
    spec = FeatureSpec(image_size=64, stats=("flat", "noise"))
    extractor = FeatureExtractor(small_trunk, spec)
    assert extractor.dim == plain.dim + 2
    views = torch.cat([image_views(flat_colour_image(), spec), image_views(noisy_photo_like_image(), spec)])
    views.requires_grad_(True)
    vectors = extractor(views)
    assert torch.allclose(vectors[:, : plain.dim], plain(views), atol=1e-6)
    assert torch.equal(vectors[:, plain.dim :], view_statistics(views, spec.stats))
    # The statistics are constants (no gradient reaches the views through them); the conv columns, which
    # Grad-CAM follows back to `features.29`, still carry gradient.
    vectors[:, plain.dim :].sum().backward(retain_graph=True)
    assert views.grad is None or float(views.grad.abs().sum()) == 0.0
    vectors[:, : plain.dim].sum().backward()
    assert float(views.grad.abs().sum()) > 0.0
