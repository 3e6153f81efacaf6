"""Contact sheet of the validation images a variant got wrong, each with its origin and probabilities.

Reads the out-of-fold probabilities research.grid saved for a variant. The PNG is derived from corpus
images, so it stays under research/out (git-ignored) or wherever --out points, never in the repository.

    python -m research.contact_sheet --variant "multi conv4+5 + generated" [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from classifier import LABELS
from classifier.errors import Mistake, draw_contact_sheet
from research.corpus import CorpusImage, read_manifest
from research.extract import OUT_DIR


def oof_path(variant_name: str) -> Path:
    return OUT_DIR / f"oof_{variant_name.replace(' ', '_').replace('/', '_')}.pt"


def draw_sheet(images: list[CorpusImage], probs: torch.Tensor, out: Path) -> int:
    """Write the sheet of misclassified images (the product's `illustfeed eval --errors` sheet), worst first."""
    predicted = probs.argmax(dim=1).tolist()
    mistakes = [
        Mistake(str(image.path), image.label, LABELS[guess], tuple(probs[index].tolist()), image.origin, image.path)
        for index, (image, guess) in enumerate(zip(images, predicted))
        if LABELS[guess] != image.label
    ]
    mistakes.sort(key=lambda mistake: mistake.probabilities[LABELS.index(mistake.true_label)])
    return draw_contact_sheet(mistakes, LABELS, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="a variant name from research.grid")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "misclassified.png")
    args = parser.parse_args()
    source = oof_path(args.variant)
    if not source.is_file():
        raise SystemExit(f"no out-of-fold probabilities at {source}; run research.grid for that variant first")
    count = draw_sheet(read_manifest(), torch.load(source, weights_only=True), args.out)
    print(f"{count} misclassified images -> {args.out}")


if __name__ == "__main__":
    main()
