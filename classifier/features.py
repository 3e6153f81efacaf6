"""Turning an image into one pooled feature vector: framing into views, conv trunk, pooling, aggregation.

A `FeatureSpec` names everything that decides the vector (backbone, which layers, which pooling, how a
non-square image is framed, input size, which pixel statistics join the conv features), so a trained head
is stored with the spec that produced its inputs and cached vectors are never mixed across specs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from classifier.preprocess import (
    CROP_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_SHORT_SIDE,
    center_crop,
    normalize,
    resize_short_side,
    to_rgb,
)
from classifier.vgg import LAST_CONV_RELU_INDEX

BACKBONES: tuple[str, ...] = ("vgg16",)
POOLINGS: tuple[str, ...] = ("avg", "max")
FRAMINGS: tuple[str, ...] = ("center_crop", "pad_square", "multi_view")
# conv4_3 and conv5_3 after their ReLU: mid-level texture (flat fills, text strokes) and object parts.
CONV4_3_RELU_INDEX = 22
# Padding colour = the ImageNet mean, so padded pixels normalise to ~0 and add no edges of their own.
NEUTRAL_RGB: tuple[int, int, int] = (124, 116, 104)
# multi_view: an image whose long side exceeds the short side by less than this is framed as one square.
MULTI_VIEW_MIN_ASPECT = 1.2
MULTI_VIEW_MAX_TILES = 3
# Pixel statistics of a view (see `view_statistics`): cues that tell drawn or rendered pixels from camera
# pixels whatever the subject. One column each, appended after the conv blocks.
IMAGE_STATS: tuple[str, ...] = ("colours", "flat", "noise", "saturation", "saturation_spread", "edges")


class FeatureSpecError(ValueError):
    """A feature spec (or its stored dict) names an unknown or invalid setting."""


@dataclass(frozen=True)
class FeatureSpec:
    """What produces a feature vector; equal specs give comparable vectors."""

    backbone: str = "vgg16"
    layers: tuple[int, ...] = (CONV4_3_RELU_INDEX, LAST_CONV_RELU_INDEX)
    pooling: tuple[str, ...] = ("avg", "max")
    framing: str = "pad_square"
    image_size: int = CROP_SIZE
    stats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so specs stay hashable and compare equal after a round trip.
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        object.__setattr__(self, "pooling", tuple(str(pool) for pool in self.pooling))
        if isinstance(self.stats, str):
            raise FeatureSpecError(f"stats must be a sequence of statistic names, got the string {self.stats!r}")
        object.__setattr__(self, "stats", tuple(str(stat) for stat in self.stats))
        if self.backbone not in BACKBONES:
            raise FeatureSpecError(f"unknown backbone {self.backbone!r}; known: {', '.join(BACKBONES)}")
        if not self.layers:
            raise FeatureSpecError("layers must name at least one trunk index")
        if list(self.layers) != sorted(set(self.layers)) or self.layers[0] < 0:
            raise FeatureSpecError(
                f"layers must be distinct non-negative indices in ascending order, got {self.layers}"
            )
        if not self.pooling or len(set(self.pooling)) != len(self.pooling):
            raise FeatureSpecError(f"pooling must name distinct methods, got {self.pooling}")
        for pool in self.pooling:
            if pool not in POOLINGS:
                raise FeatureSpecError(f"unknown pooling {pool!r}; known: {', '.join(POOLINGS)}")
        if self.framing not in FRAMINGS:
            raise FeatureSpecError(f"unknown framing {self.framing!r}; known: {', '.join(FRAMINGS)}")
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise FeatureSpecError(f"image_size must be an integer >= 32, got {self.image_size!r}")
        if len(set(self.stats)) != len(self.stats):
            raise FeatureSpecError(f"stats must name distinct statistics, got {self.stats}")
        for stat in self.stats:
            if stat not in IMAGE_STATS:
                raise FeatureSpecError(f"unknown image statistic {stat!r}; known: {', '.join(IMAGE_STATS)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists).

        A spec without statistics leaves the `stats` key out, so it serialises (and its cached vectors are
        keyed) exactly as before the field existed.
        """
        data = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
        if not self.stats:
            del data["stats"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureSpec":
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FeatureSpecError(f"unknown feature spec keys {unknown}; known: {sorted(known)}")
        return cls(**data)


def pad_to_square(image: Image.Image, fill: tuple[int, int, int] = NEUTRAL_RGB) -> Image.Image:
    """The whole image centred on a square canvas of its long side."""
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def square_tiles(image: Image.Image, count: int) -> list[Image.Image]:
    """`count` squares of the short side, evenly spaced from one end of the long side to the other."""
    width, height = image.size
    side = min(width, height)
    span = max(width, height) - side
    offsets = [round(i * span / (count - 1)) for i in range(count)] if count > 1 else [span // 2]
    if width >= height:
        return [image.crop((offset, 0, offset + side, side)) for offset in offsets]
    return [image.crop((0, offset, side, offset + side)) for offset in offsets]


def _framed(image: Image.Image, spec: FeatureSpec) -> list[Image.Image]:
    size = spec.image_size
    if spec.framing == "center_crop":
        # torchvision's eval recipe scaled to the spec's size: resize 256/224 of it, crop the centre.
        return [center_crop(resize_short_side(image, round(size * RESIZE_SHORT_SIDE / CROP_SIZE)), size)]
    whole = resize_short_side(pad_to_square(image), size)
    if spec.framing == "pad_square":
        return [whole]
    # multi_view: the whole image (layout, aspect) plus full-resolution square tiles along the long side,
    # so a tall phone screenshot is seen at a scale where its text and widgets are visible.
    aspect = max(image.size) / min(image.size)
    if aspect < MULTI_VIEW_MIN_ASPECT:
        return [whole]
    tile_count = min(MULTI_VIEW_MAX_TILES, math.ceil(aspect))
    return [whole] + [resize_short_side(tile, size) for tile in square_tiles(image, tile_count)]


def image_views(rgb_image: Image.Image, spec: FeatureSpec) -> torch.Tensor:
    """The spec's framing of one image as a normalised batch [V, 3, S, S]."""
    if min(rgb_image.size) < 1:
        raise ValueError(f"image has no pixels: size {rgb_image.size}")
    return torch.stack([normalize(view) for view in _framed(to_rgb(rgb_image), spec)])


def aggregate_views(vectors: torch.Tensor) -> torch.Tensor:
    """One vector for an image from its views' vectors [V, D]: their mean."""
    if vectors.dim() != 2 or vectors.shape[0] == 0:
        raise ValueError(f"expected a [V, D] tensor with V >= 1, got shape {tuple(vectors.shape)}")
    return vectors.mean(dim=0)


# Constants (not built per call, so TorchScript tracing keeps them without warnings).
_MEAN_255 = torch.tensor(IMAGENET_MEAN.tolist()).view(1, 3, 1, 1) * 255.0
_STD_255 = torch.tensor(IMAGENET_STD.tolist()).view(1, 3, 1, 1) * 255.0
_NEUTRAL = torch.tensor(NEUTRAL_RGB, dtype=torch.float32).view(1, 3, 1, 1)


def _image_statistics(rgb: torch.Tensor, valid: torch.Tensor, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The `wanted` statistics of IMAGE_STATS for views `rgb` [V, 3, H, W] in 0..255, over pixels where `valid`.

    Only what is wanted is computed: the statistics run inside every forward pass (Grad-CAM's included).
    """
    batch = rgb.shape[0]
    values: dict[str, torch.Tensor] = {}

    def over_valid(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (values * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)

    if "colours" in wanted:
        # Distinct colours after 4-bit quantisation per channel: flat fills and palettes use few, photos many.
        levels = (rgb / 16).floor().long()
        colour_index = (levels[:, 0] * 256 + levels[:, 1] * 16 + levels[:, 2]).flatten(1)
        histogram = torch.zeros(batch, 4096, dtype=rgb.dtype, device=rgb.device)
        histogram.scatter_add_(1, colour_index, valid.flatten(1))
        values["colours"] = torch.log((histogram > 0).sum(1).to(rgb.dtype).clamp_min(1.0)) / math.log(4096.0)

    if "flat" in wanted or "edges" in wanted:
        # Largest step to the right or lower neighbour, over channels (8-bit units).
        step_x = (rgb[:, :, :-1, 1:] - rgb[:, :, :-1, :-1]).abs().amax(1)
        step_y = (rgb[:, :, 1:, :-1] - rgb[:, :, :-1, :-1]).abs().amax(1)
        step = torch.maximum(step_x, step_y)
        step_valid = valid[:, :-1, :-1] * valid[:, :-1, 1:] * valid[:, 1:, :-1]
        # Near-flat pixels: digital fills repeat a colour exactly; camera pixels carry sensor noise.
        values["flat"] = over_valid((step <= 1.0).to(rgb.dtype), step_valid)
        # Sharp edges: among clear edges, the share that jumps within one pixel (drawn lines, hard fills)
        # rather than ramping over several (optical blur).
        edge = (step >= 16.0).to(rgb.dtype) * step_valid
        values["edges"] = (edge * (step >= 64.0).to(rgb.dtype)).flatten(1).sum(1) / edge.flatten(1).sum(1).clamp_min(
            1.0
        )

    if "noise" in wanted:
        # Fine noise in smooth areas: grey minus its 3x3 mean, where the 3x3 neighbourhood is calm.
        grey = rgb.mean(1, keepdim=True)
        residual = (grey - F.avg_pool2d(grey, 3, stride=1, padding=1, count_include_pad=False)).abs()[:, 0]
        local_range = (F.max_pool2d(grey, 3, stride=1, padding=1) + F.max_pool2d(-grey, 3, stride=1, padding=1))[:, 0]
        whole_neighbourhood = -F.max_pool2d(-valid[:, None], 3, stride=1, padding=1)[:, 0]  # no padding pixel near
        calm = (local_range <= 24.0).to(rgb.dtype) * whole_neighbourhood
        values["noise"] = torch.log1p(over_valid(residual, calm))

    if "saturation" in wanted or "saturation_spread" in wanted:
        count = valid.flatten(1).sum(1).clamp_min(1.0)
        high, low = rgb.amax(1), rgb.amin(1)
        saturation = (high - low) / high.clamp_min(1.0)
        saturation_mean = (saturation * valid).flatten(1).sum(1) / count
        values["saturation"] = saturation_mean
        values["saturation_spread"] = over_valid((saturation - saturation_mean[:, None, None]).pow(2), valid).sqrt()
    return values


def view_statistics(views: torch.Tensor, stats: tuple[str, ...]) -> torch.Tensor:
    """Named pixel statistics of normalised views [V, 3, S, S] -> [V, len(stats)], computed without gradient.

    The views are turned back into 8-bit RGB; padding (exactly the neutral colour) is left out, so the
    statistics describe the image, not its aspect ratio.
    """
    with torch.no_grad():
        x = views.detach().float()
        # Views come from 8-bit pixels: rounding recovers them exactly, so thresholds do not flicker with
        # float rounding (or reduced precision) on the way.
        rgb = (x * _STD_255 + _MEAN_255).round().clamp(0.0, 255.0)
        valid = ((rgb - _NEUTRAL).abs().amax(1) > 1.0).to(x.dtype)
        values = _image_statistics(rgb, valid, stats)
        return torch.stack([values[name] for name in stats], dim=1)


def _channels_at(trunk: nn.Sequential, index: int) -> int:
    """Output channels of trunk[index]: those of the last conv at or before it."""
    for module in reversed(list(trunk)[: index + 1]):
        if isinstance(module, nn.Conv2d):
            return module.out_channels
    raise FeatureSpecError(f"trunk index {index} comes before any conv layer")


class FeatureExtractor(nn.Module):
    """Conv trunk -> globally pooled outputs of the spec's layers, each block L2-normalised, concatenated.

    `features` keeps the trunk's own indices (`features.29` is where Grad-CAM hooks). Only the layers up to
    the deepest requested one run. Each (layer, pooling) block is scaled to unit length so that conv4_3's
    larger activations do not drown conv5_3's, whatever the image size. The spec's pixel statistics
    (`view_statistics`, no gradient) follow the conv blocks.
    """

    def __init__(self, trunk: nn.Sequential, spec: FeatureSpec):
        super().__init__()
        if spec.layers[-1] >= len(trunk):
            raise FeatureSpecError(f"layer {spec.layers[-1]} is beyond the trunk's {len(trunk)} modules")
        self.features = trunk
        self.spec = spec
        self.dim = sum(_channels_at(trunk, layer) for layer in spec.layers) * len(spec.pooling) + len(spec.stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks: list[torch.Tensor] = []
        statistics = view_statistics(x, self.spec.stats) if self.spec.stats else None
        wanted = set(self.spec.layers)
        for index in range(self.spec.layers[-1] + 1):
            x = self.features[index](x)
            if index in wanted:
                # Pool immediately: a following in-place ReLU would otherwise change this tensor.
                for pool in self.spec.pooling:
                    pooled = x.mean(dim=(2, 3)) if pool == "avg" else x.amax(dim=(2, 3))
                    blocks.append(F.normalize(pooled, dim=1))
        if statistics is not None:
            blocks.append(statistics.to(blocks[0].dtype))
        return torch.cat(blocks, dim=1)


@torch.no_grad()
def image_vectors(
    extractor: FeatureExtractor, rgb_images: Iterable[Image.Image], batch_views: int = 16
) -> torch.Tensor:
    """One aggregated vector per image [N, D], views batched through the trunk `batch_views` at a time."""
    views_per_image = [image_views(image, extractor.spec) for image in rgb_images]
    if not views_per_image:
        return torch.empty(0, extractor.dim)
    all_views = torch.cat(views_per_image)
    outputs = torch.cat([extractor(all_views[i : i + batch_views]) for i in range(0, len(all_views), batch_views)])
    vectors, start = [], 0
    for views in views_per_image:
        vectors.append(aggregate_views(outputs[start : start + len(views)]))
        start += len(views)
    return torch.stack(vectors)
