"""Contact sheet of the validation images a variant got wrong, each with its origin and probabilities.

Reads the out-of-fold probabilities research.grid saved for a variant. The PNG is derived from corpus
images, so it stays under research/out (git-ignored) or wherever --out points, never in the repository.

    python -m research.contact_sheet --variant "multi conv4+5 + generated" [--out PATH]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from classifier import LABELS
from classifier.preprocess import load_rgb_frames
from research.corpus import CorpusImage, read_manifest
from research.extract import OUT_DIR

TILE = 220
CAPTION_HEIGHT = 64
COLUMNS = 6


def oof_path(variant_name: str) -> Path:
    return OUT_DIR / f"oof_{variant_name.replace(' ', '_').replace('/', '_')}.pt"


def draw_sheet(images: list[CorpusImage], probs: torch.Tensor, out: Path) -> int:
    """Write the sheet of misclassified images, worst (lowest true-class probability) first; returns count."""
    truth = torch.tensor([image.label_index for image in images])
    wrong = torch.nonzero(probs.argmax(dim=1) != truth).flatten().tolist()
    wrong.sort(key=lambda index: float(probs[index, truth[index]]))
    rows = max(1, -(-len(wrong) // COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + CAPTION_HEIGHT)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    face = ImageFont.load_default(size=12)
    for position, index in enumerate(wrong):
        left, top = (position % COLUMNS) * TILE, (position // COLUMNS) * (TILE + CAPTION_HEIGHT)
        thumbnail = load_rgb_frames(images[index].path, max_frames=1)[0]
        thumbnail.thumbnail((TILE - 8, TILE - 8))
        sheet.paste(thumbnail, (left + (TILE - thumbnail.width) // 2, top + (TILE - thumbnail.height) // 2))
        probabilities = "  ".join(f"{label[:5]} {float(probs[index, k]):.2f}" for k, label in enumerate(LABELS))
        draw.text((left + 4, top + TILE), f"true {images[index].label}", fill=(255, 210, 120), font=face)
        draw.text((left + 4, top + TILE + 16), probabilities, fill=(230, 230, 230), font=face)
        draw.text((left + 4, top + TILE + 32), images[index].origin[:34], fill=(160, 160, 160), font=face)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return len(wrong)


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
