"""A model's mistakes on a labelled folder, for the person tuning it: a CSV of every one and a contact sheet.

Mistakes are ordered worst first (lowest probability of the true class), so the top of the CSV and of
the sheet are the confident errors, the ones a threshold cannot fix. The sheet shows at most
MAX_SHEET_TILES of them (a PNG of thousands of tiles helps nobody); the CSV lists all.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from classifier.evaluate import ScoredImage
from classifier.preprocess import load_rgb_frames
from storage.files import atomic_write

CSV_NAME = "errors.csv"
SHEET_NAME = "errors.png"
TILE = 220
CAPTION_HEIGHT = 64
COLUMNS = 6
MAX_SHEET_TILES = 240
BACKGROUND = (40, 40, 40)


@dataclass(frozen=True)
class Mistake:
    path: str  # as given by the dataset (relative to its folder when possible)
    true_label: str
    predicted: str
    probabilities: tuple[float, ...]
    group: str
    source: object  # what load_rgb_frames reads


@dataclass(frozen=True)
class ErrorReport:
    csv_path: Path
    sheet_path: Path
    mistakes: int
    on_sheet: int


def mistakes_of(scored: Sequence[ScoredImage], labels: Sequence[str], root: Path | None = None) -> list[Mistake]:
    """Misclassified decodable images, worst (lowest true-class probability) first."""
    found = []
    for item, predicted, probabilities in scored:
        if predicted is None or predicted == item.label:
            continue
        path = Path(str(item.key))
        if root is not None and path.is_relative_to(root):
            path = path.relative_to(root)
        found.append(
            Mistake(
                path.as_posix(), item.label, predicted, tuple(float(p) for p in probabilities), item.group, item.source
            )
        )
    found.sort(key=lambda mistake: (mistake.probabilities[list(labels).index(mistake.true_label)], mistake.path))
    return found


def write_errors(
    scored: Sequence[ScoredImage],
    labels: Sequence[str],
    directory: str | Path,
    root: Path | None = None,
    title: str = "",
) -> ErrorReport:
    """`directory/errors.csv` (file, true, predicted, one probability column per label, origin) and
    `directory/errors.png` (the contact sheet)."""
    directory = Path(directory)
    mistakes = mistakes_of(scored, labels, root)

    def write_csv(stream) -> None:
        text = _TextStream(stream)
        writer = csv.writer(text)
        writer.writerow(["file", "true", "predicted", *(f"p_{label}" for label in labels), "origin"])
        for mistake in mistakes:
            writer.writerow(
                [
                    mistake.path,
                    mistake.true_label,
                    mistake.predicted,
                    *(f"{p:.4f}" for p in mistake.probabilities),
                    mistake.group,
                ]
            )

    csv_path = directory / CSV_NAME
    atomic_write(csv_path, write_csv)
    sheet_path = directory / SHEET_NAME
    shown = draw_contact_sheet(mistakes[:MAX_SHEET_TILES], labels, sheet_path, title=title)
    return ErrorReport(csv_path, sheet_path, len(mistakes), shown)


class _TextStream:
    """csv.writer wants a text stream; atomic_write hands a binary one."""

    def __init__(self, binary):
        self.binary = binary

    def write(self, text: str) -> int:
        return self.binary.write(text.encode("utf-8"))


def draw_contact_sheet(mistakes: Sequence[Mistake], labels: Sequence[str], out: str | Path, title: str = "") -> int:
    """A grid of thumbnails, each captioned with true and predicted label, probabilities and origin; an
    image that cannot be read any more gets a grey tile with its name. Returns the number of tiles."""
    face = ImageFont.load_default(size=12)
    header = 24 if title or not mistakes else 0
    rows = max(1, -(-len(mistakes) // COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * TILE, header + rows * (TILE + CAPTION_HEIGHT)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if header:
        draw.text((6, 5), title or "no misclassified images", fill=(255, 255, 255), font=face)
    for position, mistake in enumerate(mistakes):
        left = (position % COLUMNS) * TILE
        top = header + (position // COLUMNS) * (TILE + CAPTION_HEIGHT)
        try:
            thumbnail = load_rgb_frames(mistake.source, max_frames=1)[0]
            thumbnail.thumbnail((TILE - 8, TILE - 8))
            sheet.paste(thumbnail, (left + (TILE - thumbnail.width) // 2, top + (TILE - thumbnail.height) // 2))
        except (OSError, ValueError):  # gone or changed since it was scored (PIL errors are OSErrors)
            draw.rectangle((left + 4, top + 4, left + TILE - 4, top + TILE - 4), fill=(90, 90, 90))
            draw.text((left + 10, top + TILE // 2), "(unreadable now)", fill=(230, 230, 230), font=face)
        probabilities = "  ".join(f"{label[:5]} {p:.2f}" for label, p in zip(labels, mistake.probabilities))
        draw.text(
            (left + 4, top + TILE), f"true {mistake.true_label} -> {mistake.predicted}", fill=(255, 210, 120), font=face
        )
        draw.text((left + 4, top + TILE + 16), probabilities, fill=(230, 230, 230), font=face)
        draw.text((left + 4, top + TILE + 32), Path(mistake.path).name[:34], fill=(160, 160, 160), font=face)
        draw.text((left + 4, top + TILE + 46), mistake.group[:34], fill=(160, 160, 160), font=face)
    atomic_write(Path(out), lambda stream: sheet.save(stream, format="PNG"))
    return len(mistakes)
