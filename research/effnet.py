"""EfficientNet-Lite0 (efficientnet_pytorch parameter names) as a pooled-feature backbone, for comparison.

Lite variant: ReLU6, no squeeze-excite, TensorFlow "same" padding, BatchNorm eps 1e-3, input
(x * 255 - 127) / 128. It takes the same ImageNet-normalised views as the VGG16 extractor and undoes that
normalisation itself, so both backbones see identical framings.

    nice -n 10 python -m research.effnet --check      # ImageNet sanity check on dev photos
    nice -n 10 python -m research.effnet --framing multi_view   # cache features like research.extract
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from classifier.features import FeatureSpec, image_views
from classifier.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_rgb_frames
from research.corpus import read_manifest, shared_dir
from research.extract import cache_path

# (repeats, kernel, first stride, expansion, in, out) per stage: efficientnet-lite0's block arguments.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
HEAD_CHANNELS = 1280


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (asymmetric for stride 2), computed per input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expansion: int, channels_in: int, channels_out: int):
        super().__init__()
        hidden = channels_in * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(channels_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, channels_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(channels_out, eps=BN_EPS)
        self.residual = stride == 1 and channels_in == channels_out
        self.expansion = expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expansion != 1 else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expansion, channels_in, channels_out in STAGES:
            for index in range(repeats):
                blocks.append(
                    MBConv(
                        kernel,
                        stride if index == 0 else 1,
                        expansion,
                        channels_in if index == 0 else channels_out,
                        channels_out,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, classes)
        self.register_buffer("imagenet_mean", torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def feature_map(self, imagenet_normalised: torch.Tensor) -> torch.Tensor:
        """[N, 1280, h, w] after the head conv, from views normalised the torchvision way."""
        rgb = imagenet_normalised * self.imagenet_std + self.imagenet_mean
        x = F.relu6(self._bn0(self._conv_stem((rgb * 255 - 127) / 128)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, imagenet_normalised: torch.Tensor) -> torch.Tensor:
        return self._fc(self.feature_map(imagenet_normalised).mean(dim=(2, 3)))

    def pooled_features(self, imagenet_normalised: torch.Tensor) -> torch.Tensor:
        """Avg and max pooled head features, each L2-normalised (same recipe as the VGG extractor)."""
        feature_map = self.feature_map(imagenet_normalised)
        return torch.cat(
            [F.normalize(feature_map.mean(dim=(2, 3)), dim=1), F.normalize(feature_map.amax(dim=(2, 3)), dim=1)], dim=1
        )


def load_lite0() -> EfficientNetLite0:
    model = EfficientNetLite0()
    state = torch.load(
        shared_dir() / "weights" / "efficientnet_lite0_imagenet.pth", map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def check_imagenet(model: EfficientNetLite0, count: int = 12) -> float:
    """Top-5 hits of the original classifier on dev ImageNet sample photos whose class index we know."""
    # The first ImageNet classes in wnid order (= class index): tench, goldfish, sharks, rays, birds.
    wnids = (
        "n01440764 n01443537 n01484850 n01491361 n01494475 n01496331 n01498041 n01514668 n01514859 n01518878 "
        "n01530575 n01531178 n01532829 n01534433 n01537544 n01558993 n01560419 n01580077 n01582220 n01592084"
    ).split()
    known = {wnid: index for index, wnid in enumerate(wnids)}
    photos = [image for image in read_manifest() if "imagenet-sample" in image.origin]
    scored = [p for p in photos if any(wnid in p.path.name or wnid in str(p.path) for wnid in known)][:count]
    spec = FeatureSpec(framing="center_crop")
    hits = 0
    for photo in scored:
        logits = model(image_views(load_rgb_frames(photo.path, 1)[0], spec))
        top5 = logits.topk(5).indices[0].tolist()
        wnid = next(w for w in known if w in str(photo.path))
        hits += known[wnid] in top5
        print(photo.path.name, "top5", top5, "expected", known[wnid])
    return hits / max(1, len(scored))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--framing", action="append", default=[])
    # One thread: on a busy shared machine each of Lite0's ~200 small ops otherwise waits for a second
    # core at every barrier (measured: 1 thread 7 views/s, 2 threads 1 view/s under load).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_lite0()
    if args.check:
        print("top-5 rate", check_imagenet(model))
    for framing in args.framing:
        spec = FeatureSpec(framing=framing)
        images = read_manifest()
        views, started = [], time.monotonic()
        for number, image in enumerate(images, 1):
            views.append(model.pooled_features(image_views(load_rgb_frames(image.path, 1)[0], spec)).to(torch.float16))
            if number % 100 == 0:
                print(
                    f"  {framing}: {number}/{len(images)}, {number / (time.monotonic() - started):.2f} images/s",
                    flush=True,
                )
        torch.save(
            {
                "spec": {"backbone": "efficientnet_lite0", "framing": framing},
                "files": [str(i.path) for i in images],
                "views": views,
            },
            cache_path(f"dev_lite0_{framing}"),
        )


if __name__ == "__main__":
    main()
