"""Views per second of VGG16 (pooled conv4_3 + conv5_3) and EfficientNet-Lite0 on the same dev views.

Both run on identical 224 x 224 batches in alternation, so load from other processes hits both alike;
the ratio is the number to trust on a shared machine.

    nice -n 10 python -m research.bench_backbones [--views 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from classifier.features import FeatureExtractor, FeatureSpec, image_views
from classifier.preprocess import load_rgb_frames
from research.corpus import read_manifest
from research.effnet import load_lite0
from research.extract import load_vgg16_trunk


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="1 is fastest on a busy shared machine (see research.effnet)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = FeatureSpec(layers=(22, 29), framing="pad_square")
    images = read_manifest()[:: max(1, 880 // args.views)][: args.views]
    batch = torch.cat([image_views(load_rgb_frames(image.path, 1)[0], spec) for image in images])
    backbones = {"vgg16": FeatureExtractor(load_vgg16_trunk(), spec).eval(), "lite0": load_lite0()}
    run = {"vgg16": backbones["vgg16"], "lite0": backbones["lite0"].pooled_features}
    for function in run.values():
        function(batch[:2])  # warm-up: allocator and kernel selection
    seconds = {name: 0.0 for name in run}
    for _ in range(args.rounds):
        for name, function in run.items():
            started = time.perf_counter()
            function(batch)
            seconds[name] += time.perf_counter() - started
    rates = {name: args.rounds * len(batch) / spent for name, spent in seconds.items()}
    for name, rate in rates.items():
        print(f"{name:<6} {rate:7.2f} views/s  ({args.threads} threads, {len(batch)} views x {args.rounds} rounds)")
    print(f"lite0 / vgg16 speed ratio: {rates['lite0'] / rates['vgg16']:.1f}x")


if __name__ == "__main__":
    main()
