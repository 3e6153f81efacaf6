"""One pass over dev/ + train/: per view, the frozen head's wide vector and the pool4 map (conv5's input).

For every manifest image, each `multi_view` view (224 px) runs the ImageNet trunk once up to pool4
(`features.23`, 512 x 14 x 14): the conv3_3 and conv4_3 taps are pooled on the way, the pool4 map is stored
as fp16 (what fine-tuning conv5_1..conv5_3 starts from), and conv5 finishes the frozen conv5_3 tap.
The wide vector is the product FeatureExtractor's for `WIDE_SPEC` (conv3_3, conv4_3, conv5_3 avg+max, each
block L2-normalised, then the `flat` and `noise` pixel statistics), so heads trained on it load in the product.

Outputs under research/out/: `pool4_<corpus>.f16` (raw fp16, views in order), `wide_<corpus>.pt` (files,
labels, origins, views per image, [views, D] vectors, rows that were skipped and why).

    nice -n 10 python -m research.pool4 [--precision bf16] [--limit 50]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from classifier.features import FeatureSpec, image_views, view_statistics
from classifier.preprocess import load_rgb_frames
from research.corpus import read_manifest, shared_dir
from research.extract import OUT_DIR, load_vgg16_trunk

CORPORA = ("dev", "train")
WIDE_SPEC = FeatureSpec(layers=(15, 22, 29), pooling=("avg", "max"), framing="multi_view", stats=("flat", "noise"))
POOL4_INDEX = 23
POOL4_SHAPE = (512, 14, 14)


def pool4_path(corpus: str) -> Path:
    return OUT_DIR / f"pool4_{corpus}.f16"


def wide_path(corpus: str) -> Path:
    return OUT_DIR / f"wide_{corpus}.pt"


def pooled_block(x: torch.Tensor) -> list[torch.Tensor]:
    """avg and max pooled, each L2-normalised: FeatureExtractor's block for one tap."""
    x = x.float()
    return [F.normalize(x.mean(dim=(2, 3)), dim=1), F.normalize(x.amax(dim=(2, 3)), dim=1)]


def conv5_vector(conv5: torch.nn.Sequential, pool4: torch.Tensor) -> torch.Tensor:
    """The conv5_3 avg+max block from pool4 maps (shared with research.finetune, so both agree)."""
    return torch.cat(pooled_block(conv5(pool4)), dim=1)


@torch.inference_mode()
def run_views(trunk: torch.nn.Sequential, views: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised views [V, 3, 224, 224] -> (wide vectors [V, D] fp32, pool4 maps [V, 512, 14, 14] fp16)."""
    statistics = view_statistics(views, WIDE_SPEC.stats)
    blocks: list[torch.Tensor] = []
    x = views.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for index in range(POOL4_INDEX + 1):
            x = trunk[index](x)
            if index in (15, 22):
                blocks += pooled_block(x)
        pool4 = x.to(torch.float16)
        blocks.append(conv5_vector(trunk[POOL4_INDEX + 1 : 30], x))
    return torch.cat(blocks + [statistics], dim=1), pool4.contiguous()


@dataclass
class CorpusPass:
    """What one pass over a corpus kept, skipped and did (filled in by `view_batches`)."""

    corpus: str
    kept: list = field(default_factory=list)
    view_counts: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    done_views: int = 0

    def record(self) -> dict:
        """The per-image part of a cache file, with the pass's skips and seconds."""
        return {
            "files": [str(image.path) for image in self.kept],
            "labels": [image.label for image in self.kept],
            "origins": [image.origin for image in self.kept],
            "view_counts": self.view_counts,
            "skipped": self.skipped,
            "seconds": time.monotonic() - self.started,
        }

    def summary(self, note: str = "") -> str:
        elapsed = time.monotonic() - self.started
        views = sum(self.view_counts)
        return (
            f"{self.corpus}: {len(self.kept)} images, {views} views in {elapsed:.0f} s "
            f"({views / elapsed:.2f} views/s{note}); skipped {len(self.skipped)}"
        )


def view_batches(images: list, batch_views: int, progress: CorpusPass) -> Iterator[torch.Tensor]:
    """Every image's `WIDE_SPEC` views, in image order, as batches of up to `batch_views` views. An image that
    does not decode is recorded in `progress.skipped` and left out, never fatal."""
    pending: list[torch.Tensor] = []

    def drain() -> Iterator[torch.Tensor]:
        batch = torch.cat(pending)
        pending.clear()
        for start in range(0, len(batch), batch_views):
            part = batch[start : start + batch_views]
            yield part
            progress.done_views += len(part)

    for number, image in enumerate(images, 1):
        try:
            views = image_views(load_rgb_frames(image.path, max_frames=1)[0], WIDE_SPEC)
        except Exception as error:  # any decoder failure: reported and skipped, never fatal
            progress.skipped.append((str(image.path), f"{type(error).__name__}: {error}"))
            continue
        progress.kept.append(image)
        progress.view_counts.append(len(views))
        pending.append(views)
        if sum(len(v) for v in pending) >= batch_views:
            yield from drain()
        if number % 100 == 0:
            rate = progress.done_views / (time.monotonic() - progress.started)
            print(
                f"  {progress.corpus}: {number}/{len(images)} images, {progress.done_views} views, {rate:.2f} views/s",
                flush=True,
            )
    if pending:
        yield from drain()


def cache_corpus(corpus: str, trunk: torch.nn.Sequential, precision: str, limit: int | None, batch_views: int) -> None:
    images = read_manifest(shared_dir() / "corpus" / corpus)[:limit]
    progress, vectors = CorpusPass(corpus), []
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with pool4_path(corpus).open("wb") as maps:
        for batch in view_batches(images, batch_views, progress):
            wide, pool4 = run_views(trunk, batch, precision)
            vectors.append(wide)
            maps.write(pool4.numpy().tobytes())
    torch.save(
        {
            "spec": WIDE_SPEC.to_dict(),
            "precision": precision,
            **progress.record(),
            "vectors": torch.cat(vectors).to(torch.float32),
        },
        wide_path(corpus),
    )
    print(progress.summary(f", {precision}"), flush=True)


def load_pool4(corpus: str) -> np.ndarray:
    """[views, 512, 14, 14] fp16, memory-mapped."""
    flat = np.memmap(pool4_path(corpus), dtype=np.float16, mode="r")
    return flat.reshape(-1, *POOL4_SHAPE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", choices=CORPORA)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--limit", type=int, help="first N images of each corpus (speed probe)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-views", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trunk = load_vgg16_trunk()
    for corpus in args.corpus or CORPORA:
        cache_corpus(corpus, trunk, args.precision, args.limit, args.batch_views)


if __name__ == "__main__":
    main()
