"""Cache per-view VGG16 features of the dev corpus (and generated images) under research/out/.

One cache per framing holds, for every image, the vectors of all its views for a wide spec (conv3_3,
conv4_3, conv5_3; avg and max). Every block is L2-normalised on its own, so narrower specs are column
slices of it and aggregation variants need no second pass through the conv net.

    nice -n 10 python -m research.extract --framing multi_view --framing center_crop
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from classifier.features import FeatureExtractor, FeatureSpec, image_views
from classifier.preprocess import load_rgb_frames
from classifier.vgg import make_features
from research.corpus import read_manifest, shared_dir
from research.synth import SETS, read_generated, set_dir

# ILLUSTFEED_RESEARCH_OUT: another folder (a small trial run beside a long one).
OUT_DIR = Path(os.environ.get("ILLUSTFEED_RESEARCH_OUT") or Path(__file__).resolve().parent / "out")
WIDE_LAYERS = (15, 22, 29)
WIDE_POOLING = ("avg", "max")


def load_vgg16_trunk(weights_path: Path | None = None) -> torch.nn.Sequential:
    weights_path = weights_path or shared_dir() / "weights" / "vgg16_features_imagenet.pth"
    trunk = make_features()
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    trunk.load_state_dict({key.removeprefix("features."): value for key, value in state.items()})
    return trunk.eval()


def block_slices(spec: FeatureSpec, layers: tuple[int, ...], pooling: tuple[str, ...]) -> list[slice]:
    """Column ranges of the wide cache that hold the (layer, pooling) blocks of a narrower spec."""
    channels = {15: 256, 22: 512, 29: 512}
    slices, start = {}, 0
    for layer in spec.layers:
        for pool in spec.pooling:
            slices[(layer, pool)] = slice(start, start + channels[layer])
            start += channels[layer]
    return [slices[(layer, pool)] for layer in layers for pool in pooling]


def cache_path(name: str) -> Path:
    return OUT_DIR / f"features_{name}.pt"


@torch.no_grad()
def extract_views(paths: list[Path], spec: FeatureSpec, trunk: torch.nn.Sequential, log_every: int = 50):
    """Per-image [V, D] tensors for a list of image files."""
    extractor = FeatureExtractor(trunk, spec).eval()
    per_image, started = [], time.monotonic()
    for number, path in enumerate(paths, 1):
        views = image_views(load_rgb_frames(path, max_frames=1)[0], spec)
        per_image.append(extractor(views).to(torch.float16))
        if number % log_every == 0:
            rate = number / (time.monotonic() - started)
            print(f"  {spec.framing}: {number}/{len(paths)} images, {rate:.2f} images/s", flush=True)
    return per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framing", action="append", required=True)
    parser.add_argument(
        "--threads", type=int, default=1, help="1 is fastest on a busy shared machine (see research.effnet)"
    )
    parser.add_argument("--synthetic", choices=SETS, help="a generated set of research.synth instead of the dev corpus")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        paths = [set_dir(args.synthetic) / item.file for item in read_generated(args.synthetic)]
        prefix = "synth" if args.synthetic == "ui" else f"synth_{args.synthetic}"
    else:
        paths, prefix = [image.path for image in read_manifest()], "dev"
    trunk = load_vgg16_trunk()
    for framing in args.framing:
        spec = FeatureSpec(layers=WIDE_LAYERS, pooling=WIDE_POOLING, framing=framing)
        views = extract_views(paths, spec, trunk)
        target = cache_path(f"{prefix}_{framing}")
        torch.save({"spec": spec.to_dict(), "files": [str(path) for path in paths], "views": views}, target)
        print(f"wrote {target}", flush=True)


if __name__ == "__main__":
    main()
