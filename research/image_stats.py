"""Cache per-view pixel statistics (classifier.features.view_statistics) of the dev corpus and generated sets.

No conv pass: the views are framed as research.extract frames them and only the statistics are computed,
so research.grid can join them to the cached VGG16 columns (the product computes the same columns inside
FeatureExtractor).

    nice -n 10 python -m research.image_stats --framing multi_view --framing center_crop
"""

from __future__ import annotations

import argparse
import time

import torch

from classifier.features import IMAGE_STATS, FeatureSpec, image_views, view_statistics
from classifier.preprocess import load_rgb_frames
from research.corpus import read_manifest
from research.extract import OUT_DIR
from research.synth import read_generated, set_dir

SET_PREFIXES = {"dev": None, "synth": "ui", "synth_stylised": "stylised"}


def stats_path(prefix: str, framing: str):
    return OUT_DIR / f"stats_{prefix}_{framing}.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framing", action="append", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for prefix, generated in SET_PREFIXES.items():
        if generated is None:
            paths = [image.path for image in read_manifest()]
        else:
            paths = [set_dir(generated) / item.file for item in read_generated(generated)]
        for framing in args.framing:
            spec = FeatureSpec(framing=framing, stats=IMAGE_STATS)
            started = time.monotonic()
            per_image = [
                view_statistics(image_views(load_rgb_frames(path, max_frames=1)[0], spec), IMAGE_STATS)
                for path in paths
            ]
            torch.save(
                {"stats": list(IMAGE_STATS), "files": [str(p) for p in paths], "views": per_image},
                stats_path(prefix, framing),
            )
            print(f"{prefix} {framing}: {len(paths)} images in {time.monotonic() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
