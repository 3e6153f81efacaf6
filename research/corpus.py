"""The dev corpus as rows (path, label, origin group), read from its manifest."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from classifier import LABELS


def shared_dir() -> Path:
    """`$ILLUSTFEED_SHARED`, else the `shared/` folder beside the repository root."""
    configured = os.environ.get("ILLUSTFEED_SHARED")
    return Path(configured) if configured else Path(__file__).resolve().parents[1].parent / "shared"


def dev_dir() -> Path:
    return shared_dir() / "corpus" / "dev"


@dataclass(frozen=True)
class CorpusImage:
    path: Path
    label: str
    # The manifest's origin up to the first space: one package, repository or photo set.
    origin: str

    @property
    def label_index(self) -> int:
        return LABELS.index(self.label)


def origin_group(origin: str) -> str:
    return origin.split(" ", 1)[0]


def read_manifest(corpus_dir: Path | None = None) -> list[CorpusImage]:
    corpus_dir = corpus_dir or dev_dir()
    manifest = corpus_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest at {manifest}; set ILLUSTFEED_SHARED to the shared folder")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = []
    for row in rows:
        if row["label"] not in LABELS:
            raise ValueError(f"manifest row {row['file']!r} has unknown label {row['label']!r}")
        images.append(CorpusImage(corpus_dir / row["file"], row["label"], origin_group(row["origin"])))
    return images
