"""Markdown tables for the model card from research/out/validation.json (written by research.grid).

python -m research.report [--per-origin VARIANT]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from classifier import LABELS
from research.contact_sheet import oof_path
from research.corpus import read_manifest
from research.extract import OUT_DIR
from research.validate import summarise


def variant_table(results: dict) -> str:
    lines = [
        "| variant | accuracy | macro-F1 | origin-balanced acc. | illustration recall (pooled / origin mean) "
        "| screenshot recall | photo recall | T |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        metrics = result["metrics"]
        recalls = [f"{metrics['recall'][label]:.3f} / {metrics['origin_mean_recall'][label]:.3f}" for label in LABELS]
        lines.append(
            f"| {name} | {metrics['accuracy']:.3f} | {metrics['macro_f1']:.3f} | "
            f"{metrics['origin_balanced_accuracy']:.3f} | " + " | ".join(recalls) + f" | {metrics['temperature']:.2f} |"
        )
    return "\n".join(lines)


def per_origin_table(variant: str) -> str:
    """Recall per (class, held-out origin) for one variant, from its saved out-of-fold probabilities."""
    images = read_manifest()
    predicted = torch.load(oof_path(variant), weights_only=True).argmax(dim=1).tolist()
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for image, guess in zip(images, predicted):
        groups[(image.label, image.origin)].append(LABELS[guess])
    lines = ["| class | held-out origin | n | recall | predicted as |", "|---|---|---|---|---|"]
    for (label, origin), guesses in sorted(groups.items(), key=lambda item: (LABELS.index(item[0][0]), -len(item[1]))):
        spread = ", ".join(
            f"{other} {guesses.count(other)}" for other in LABELS if other != label and guesses.count(other)
        )
        lines.append(f"| {label} | {origin} | {len(guesses)} | {guesses.count(label) / len(guesses):.2f} | {spread} |")
    return "\n".join(lines)


# The two origins that hold most of their class: with either held out, its class loses its main style.
GIANT_ORIGINS = ("deb:wesnoth-1.16-data=1:1.16.9-1", "github:EliSchwartz/imagenet-sample-images@bc69043e2862")


def without_giants_table(results: dict) -> str:
    """Metrics of every variant on the images outside the giant origins (same out-of-fold predictions)."""
    images = read_manifest()
    keep = [index for index, image in enumerate(images) if image.origin not in GIANT_ORIGINS]
    truth = torch.tensor([images[index].label_index for index in keep])
    lines = ["| variant | accuracy | macro-F1 | illustration | screenshot | photo |", "|---|---|---|---|---|---|"]
    for name in results:
        probs = torch.load(oof_path(name), weights_only=True)[keep]
        metrics = summarise(truth, probs, [images[index].origin for index in keep])
        recalls = " | ".join(f"{metrics['recall'][label]:.3f}" for label in LABELS)
        lines.append(f"| {name} | {metrics['accuracy']:.3f} | {metrics['macro_f1']:.3f} | {recalls} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-origin", help="also print the per-origin recall table of this variant")
    args = parser.parse_args()
    results = json.loads((OUT_DIR / "validation.json").read_text())
    print(variant_table(results))
    print()
    print(f"Without the giant origins ({len(GIANT_ORIGINS)} held-out folds dropped from scoring):")
    print(without_giants_table(results))
    if args.per_origin:
        print()
        print(per_origin_table(args.per_origin))


if __name__ == "__main__":
    main()
