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
        spread = ", ".join(f"{other} {guesses.count(other)}" for other in LABELS if other != label and guesses.count(other))
        lines.append(f"| {label} | {origin} | {len(guesses)} | {guesses.count(label) / len(guesses):.2f} | {spread} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-origin", help="also print the per-origin recall table of this variant")
    args = parser.parse_args()
    print(variant_table(json.loads((OUT_DIR / "validation.json").read_text())))
    if args.per_origin:
        print()
        print(per_origin_table(args.per_origin))


if __name__ == "__main__":
    main()
