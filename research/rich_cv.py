"""Which of research.rich's candidate blocks earn their columns: the same origin-grouped 4-fold CV, head recipe
and feed figures as research.cv15, one row per block combination.

    nice -n 10 python -m research.rich_cv [--combo wide+std ...] [--l2 0.1 ...]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace

import torch

from classifier import LABELS
from classifier.features import IMAGE_STATS
from classifier.policy import PolicyTargets
from research.cv15 import VARIANTS, Corpus, folds_of, format_summary, head_oof_logits, merge_results, summary
from research.extract import OUT_DIR
from research.pool4 import CORPORA
from research.rich import rich_path

SHIPPED = VARIANTS["ill x2, l2 1e-1"]
DEFAULT_COMBOS = (
    "wide",
    "wide+std",
    "wide+low",
    "wide+grid",
    "wide+gram",
    "wide+allstats",
    "wide+std+low",
    "wide+std+low+allstats",
)


def load_blocks(corpora: tuple[str, ...] = CORPORA) -> tuple[dict, list[int], list[str], list[str], list[str], list]:
    blocks: dict[str, list[torch.Tensor]] = {}
    labels, origins, corpus_of, files, counts = [], [], [], [], []
    for corpus in corpora:
        data = torch.load(rich_path(corpus), weights_only=False)
        for name, values in data["blocks"].items():
            blocks.setdefault(name, []).append(values)
        labels += [LABELS.index(label) for label in data["labels"]]
        origins += data["origins"]
        corpus_of += [corpus] * len(data["labels"])
        files += data["files"]
        counts += data["view_counts"]
    return {name: torch.cat(parts) for name, parts in blocks.items()}, labels, origins, corpus_of, files, counts


def per_image(views: torch.Tensor, counts: list[int], how: str) -> torch.Tensor:
    """[views, d] -> [images, d]: `mean` of the views, or `whole+tiles`: whole view and tile mean side by side."""
    rows, start = [], 0
    for count in counts:
        block = views[start : start + count].float()
        if how == "mean":
            rows.append(block.mean(0))
        else:
            tiles = block[1:].mean(0) if count > 1 else block[0]
            rows.append(torch.cat([block[0], tiles]))
        start += count
    return torch.stack(rows)


def combo_vectors(blocks: dict, counts: list[int], combo: str, how: str) -> tuple[torch.Tensor, int]:
    """Columns of a combination, conv blocks first and pixel statistics last; returns (vectors, tail columns)."""
    conv, tail = [], []
    for name in combo.split("+"):
        if name == "wide":
            conv.append(blocks["wide"][:, :-2])
            tail.append(blocks["wide"][:, -2:])
        elif name == "allstats":
            tail = [blocks["stats"]]  # replaces flat+noise (both are among the six)
        else:
            conv.append(blocks[name])
    # Aggregated apart, so that with `whole+tiles` both views' statistics stay at the end (the head's own L2
    # for the last `tail` columns must land on them, not on conv columns).
    statistics = per_image(torch.cat(tail, dim=1), counts, how)
    return torch.cat([per_image(torch.cat(conv, dim=1), counts, how), statistics], dim=1), statistics.shape[1]


def mlp_oof_logits(
    data: Corpus, settings, fold: list[int], hidden: int = 256, epochs: int = 300, seeds: int = 3
) -> torch.Tensor:
    """Out-of-fold logits of a one-hidden-layer MLP (dropout, weight decay, Adam, full batch, the head's sample
    weights), averaged over seeds: does a non-linear head find what the linear one cannot?"""
    from research.heads import sample_weights

    logits = torch.zeros(len(data.labels), len(LABELS))
    fold_tensor = torch.tensor(fold)
    for held in range(max(fold) + 1):
        out = fold_tensor == held
        train_x = data.vectors[~out].float()
        mean, scale = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x = (train_x - mean) / scale
        test_x = (data.vectors[out].float() - mean) / scale
        labels = data.labels[~out]
        weights = sample_weights(labels, [o for o, f in zip(data.origins, fold) if f != held], settings, len(LABELS))
        for seed in range(seeds):
            torch.manual_seed(seed)
            net = torch.nn.Sequential(
                torch.nn.Dropout(0.2),
                torch.nn.Linear(train_x.shape[1], hidden),
                torch.nn.GELU(),
                torch.nn.Dropout(0.5),
                torch.nn.Linear(hidden, len(LABELS)),
            )
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=settings.l2)
            for _ in range(epochs):
                optimizer.zero_grad()
                loss = (torch.nn.functional.cross_entropy(net(train_x), labels, reduction="none") * weights).mean()
                loss.backward()
                optimizer.step()
            net.eval()
            with torch.no_grad():
                logits[out] += net(test_x) / seeds
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--combo", action="append")
    parser.add_argument("--l2", type=float, action="append")
    parser.add_argument("--aggregate", choices=("mean", "whole+tiles"), action="append")
    parser.add_argument("--head", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--corpus", action="append", choices=CORPORA, help="default: all (a trial on fewer)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    blocks, labels, origins, corpora, files, counts = load_blocks(tuple(args.corpus or CORPORA))
    fold = folds_of(origins)
    print(f"{len(labels)} images, {sum(counts)} views, fold sizes {sorted(Counter(fold).values())}", flush=True)
    assert len(IMAGE_STATS) == blocks["stats"].shape[1]
    results = []
    for how in args.aggregate or ["mean"]:
        for combo in args.combo or DEFAULT_COMBOS:
            vectors, tail = combo_vectors(blocks, counts, combo, how)
            for l2 in args.l2 or [SHIPPED.l2]:
                settings = replace(SHIPPED, l2=l2, tail_columns=tail)
                started = time.monotonic()
                data = Corpus(vectors, torch.tensor(labels), origins, corpora, files, counts)
                if args.head == "mlp":
                    logits = mlp_oof_logits(data, settings, fold)
                else:
                    logits = head_oof_logits(data, settings, fold)
                name = f"{combo} [{how}] {args.head} l2 {l2:g} ({vectors.shape[1]})"
                results.append(summary(name, data, logits, fold, PolicyTargets()))
                print(format_summary(results[-1]) + f"  ({time.monotonic() - started:.0f} s)", flush=True)
    merge_results(OUT_DIR / "rich_cv.json", results)


if __name__ == "__main__":
    main()
