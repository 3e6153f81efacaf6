"""One pass over dev/ + train/ that keeps, per view, more than the product's vector: candidate features for
a richer frozen-trunk spec, all from the same forward pass (the conv trunk is what costs).

Per `multi_view` view (224 px), fp32, blocks in this order (each L2-normalised on its own, as the product's
FeatureExtractor does, so every block can be switched on or off by column slices):

- `wide`: the product vector of `research.pool4.WIDE_SPEC` (conv3_3, conv4_3, conv5_3 avg+max, flat, noise),
  so the shipped spec's vectors (and base vectors for train/) come out of this pass too;
- `std`: per-channel standard deviation of conv3_3, conv4_3, conv5_3 (first- and second-order channel
  statistics are the style descriptor of style transfer: brush strokes, flat fills, sensor noise);
- `low`: conv1_2 avg+std and conv2_2 avg+max+std (fine texture: line art, JPEG blocks, dithering);
- `grid`: conv5_3 averaged over a 3x3 grid of the view (where things are: bars along an edge of a frame);
- `gram`: conv2_2's channel Gram matrix (upper triangle, 8,256 values), the classic texture/style feature;
- `stats`: all six pixel statistics of classifier.features.IMAGE_STATS.

Output: research/out/rich_<corpus>.pt with files, labels, origins, view counts, blocks {name: [views, d] fp16},
and research.pool4's wide_<corpus>.pt (the shipped spec's vectors) for research.cv15 / research.train_default.

    nice -n 5 python -m research.rich [--corpus dev] [--limit 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

from classifier.features import IMAGE_STATS, FeatureSpec, view_statistics
from research.corpus import read_manifest, shared_dir
from research.extract import OUT_DIR, load_vgg16_trunk
from research.pool4 import CORPORA, WIDE_SPEC, CorpusPass, view_batches, wide_path

CONV1_2, CONV2_2, CONV3_3, CONV4_3, CONV5_3 = 3, 8, 15, 22, 29
BLOCKS = ("wide", "std", "low", "grid", "gram", "stats")


def rich_path(corpus: str) -> Path:
    return OUT_DIR / f"rich_{corpus}.pt"


def _layouts() -> dict[tuple[int, str], tuple[str, int, int]]:
    """(trunk index, pooling) -> (block, first column, width) of the per-view blocks `run_views` returns."""
    where: dict[tuple[int, str], tuple[str, int, int]] = {}
    start = 0
    for layer, width in ((CONV3_3, 256), (CONV4_3, 512), (CONV5_3, 512)):
        for pool in ("avg", "max"):
            where[(layer, pool)] = ("wide", start, width)
            start += width
    start = 0
    for layer, width in ((CONV3_3, 256), (CONV4_3, 512), (CONV5_3, 512)):
        where[(layer, "std")] = ("std", start, width)
        start += width
    start = 0
    for layer, pool, width in ((CONV1_2, "avg", 64), (CONV1_2, "std", 64)) + tuple(
        (CONV2_2, pool, 128) for pool in ("avg", "max", "std")
    ):
        where[(layer, pool)] = ("low", start, width)
        start += width
    return where


def spec_columns(spec: FeatureSpec) -> list[tuple[str, list[int]]] | None:
    """The cached columns that make a product vector of `spec`, in FeatureExtractor's order (layer, then
    pooling, then pixel statistics); None when this pass does not hold the spec."""
    if spec.backbone != "vgg16" or spec.framing != "multi_view" or spec.image_size != 224:
        return None
    where = _layouts()
    columns: list[tuple[str, list[int]]] = []
    for layer in spec.layers:
        for pool in spec.pooling:
            if (layer, pool) not in where:
                return None
            block, start, width = where[(layer, pool)]
            columns.append((block, list(range(start, start + width))))
    if spec.stats:
        columns.append(("stats", [IMAGE_STATS.index(name) for name in spec.stats]))
    return columns


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1), dim=1)


def _std(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).std(dim=2)


@torch.inference_mode()
def run_views(trunk: torch.nn.Sequential, views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised views [V, 3, 224, 224] -> {block name: [V, d] fp32}."""
    stats = view_statistics(views, IMAGE_STATS)
    taps: dict[int, torch.Tensor] = {}
    x = views.contiguous(memory_format=torch.channels_last)
    for index in range(CONV5_3 + 1):
        x = trunk[index](x)
        if index in (CONV1_2, CONV2_2, CONV3_3, CONV4_3, CONV5_3):
            # Each tap is a ReLU's output and a max-pool (not in place) follows it: kept as is, no copy.
            taps[index] = x
    wide = []
    for layer in (CONV3_3, CONV4_3, CONV5_3):
        tap = taps[layer]
        wide += [_unit(tap.mean(dim=(2, 3))), _unit(tap.amax(dim=(2, 3)))]
    flat_noise = stats[:, [IMAGE_STATS.index(name) for name in WIDE_SPEC.stats]]
    low1, low2 = taps[CONV1_2], taps[CONV2_2]
    channels = low2.shape[1]
    flat2 = low2.flatten(2)
    gram = torch.bmm(flat2, flat2.transpose(1, 2)) / flat2.shape[2]
    upper = torch.triu_indices(channels, channels)
    return {
        "wide": torch.cat(wide + [flat_noise], dim=1),
        "std": torch.cat([_unit(_std(taps[layer])) for layer in (CONV3_3, CONV4_3, CONV5_3)], dim=1),
        "low": torch.cat(
            [
                _unit(low1.mean(dim=(2, 3))),
                _unit(_std(low1)),
                _unit(low2.mean(dim=(2, 3))),
                _unit(low2.amax(dim=(2, 3))),
                _unit(_std(low2)),
            ],
            dim=1,
        ),
        "grid": _unit(F.adaptive_avg_pool2d(taps[CONV5_3], 3)),
        "gram": _unit(gram[:, upper[0], upper[1]]),
        "stats": stats,
    }


def cache_corpus(corpus: str, trunk: torch.nn.Sequential, limit: int | None, batch_views: int) -> None:
    images = read_manifest(shared_dir() / "corpus" / corpus)[:limit]
    progress = CorpusPass(corpus)
    blocks: dict[str, list[torch.Tensor]] = {name: [] for name in BLOCKS}
    for batch in view_batches(images, batch_views, progress):
        for name, values in run_views(trunk, batch).items():
            blocks[name].append(values.to(torch.float16))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(
        {**progress.record(), "blocks": {name: torch.cat(values) for name, values in blocks.items()}},
        rich_path(corpus),
    )
    print(progress.summary(), flush=True)


def write_wide(corpus: str) -> Path:
    """research.pool4's `wide_<corpus>.pt` (the shipped spec's per-view vectors) from this pass, so research.cv15
    and research.train_default train the shipped model from it without a pool4 pass."""
    rich = torch.load(rich_path(corpus), weights_only=False)
    torch.save(
        {
            "spec": WIDE_SPEC.to_dict(),
            "precision": "fp32",
            "files": rich["files"],
            "labels": rich["labels"],
            "origins": rich["origins"],
            "view_counts": rich["view_counts"],
            "vectors": rich["blocks"]["wide"].float(),
            "skipped": rich["skipped"],
            "seconds": rich["seconds"],
        },
        wide_path(corpus),
    )
    return wide_path(corpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", choices=CORPORA)
    parser.add_argument("--limit", type=int, help="first N images of each corpus (speed probe)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-views", type=int, default=16)
    parser.add_argument("--wide-only", action="store_true", help="only (re)write wide_<corpus>.pt from the caches")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trunk = load_vgg16_trunk().to(memory_format=torch.channels_last)
    for corpus in args.corpus or CORPORA:
        if not args.wide_only:
            cache_corpus(corpus, trunk, args.limit, args.batch_views)
        print(f"wrote {write_wide(corpus)}", flush=True)


if __name__ == "__main__":
    main()
