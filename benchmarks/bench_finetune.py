"""Fine-tuning cost on this CPU, fp32 vs bf16 autocast, in one run: caching pool4 maps (VGG16 up to
`features.23`, once per training view) and training conv5_1..conv5_3 + head on cached maps.

Usage: python benchmarks/bench_finetune.py [--views 48] [--batch 16] [--threads 2]
Prints the CPU's bf16/AMX flags, views/s for each step and precision (interleaved, best of `--rounds`),
the bf16/fp32 ratios, and what an epoch and a 4-fold comparison over dev/ + train/ (6,927 views) cost.
bf16 is worth using for training only where the ratio is > 1 (native avx512_bf16 or AMX).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classifier.inference import cpu_flags  # noqa: E402
from classifier.vgg import make_features  # noqa: E402

POOL4_INDEX = 23
CORPUS_VIEWS = 6927  # multi_view views of dev/ (2,219) + train/ (4,708)
FOLDS = 4


def timed(step, views: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return views / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flags = cpu_flags()
    print(
        "CPU flags:",
        " ".join(sorted(flag for flag in flags if "bf16" in flag or "amx" in flag or flag == "avx512f")) or "none",
    )
    trunk = make_features().eval()  # speed does not depend on the weights' values
    lower, conv5 = trunk[: POOL4_INDEX + 1], trunk[POOL4_INDEX + 1 : 30]
    head = torch.nn.Linear(512, 3)
    images = torch.randn(args.views, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    maps = torch.randn(args.views, 512, 14, 14).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(list(conv5.parameters()) + list(head.parameters()), lr=1e-5)

    def cache(bf16: bool):
        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for start in range(0, args.views, args.batch):
                    lower(images[start : start + args.batch])

        return step

    def train(bf16: bool):
        def step():
            for start in range(0, args.views, args.batch):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = conv5(maps[start : start + args.batch])
                    logits = head(torch.cat([out.mean((2, 3))], 1))
                loss = logits.float().logsumexp(1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        return step

    rates = {}
    for name, make in (("cache pool4", cache), ("train conv5+head", train)):
        for bf16 in (False, True):  # each precision warmed up, then timed
            make(bf16)()
        rates[(name, False)] = timed(make(False), args.views, args.rounds)
        rates[(name, True)] = timed(make(True), args.views, args.rounds)
        print(
            f"{name}: fp32 {rates[(name, False)]:.2f} views/s, bf16 {rates[(name, True)]:.2f} views/s, "
            f"bf16/fp32 {rates[(name, True)] / rates[(name, False)]:.2f}"
        )
    best = {name: max(rates[(name, False)], rates[(name, True)]) for name, _ in rates}
    cache_minutes = CORPUS_VIEWS / best["cache pool4"] / 60
    epoch_minutes = CORPUS_VIEWS * (FOLDS - 1) / FOLDS / best["train conv5+head"] / 60
    print(
        f"caching dev+train once: {cache_minutes:.0f} min; one fine-tune epoch of a fold: {epoch_minutes:.1f} min; "
        f"{FOLDS} folds x 3 epochs: {FOLDS * 3 * epoch_minutes:.0f} min"
    )


if __name__ == "__main__":
    main()
