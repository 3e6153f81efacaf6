"""Labelled image sets for training and evaluation, and the fixed, group-wise validation split.

Images that share a group (the account that posted them, or the `origin` of a folder's manifest row) are
never split between training and validation, so validation measures unseen sources, not near-copies.
A group's side is a hash of its name: adding data never moves an existing group to the other side.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

from classifier import LABELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
VALIDATION_FRACTION = 0.2
# A validation-side group with more images than this is split by its sub-groups (post / manifest origin), so
# one big source cannot take a class's training images away. An absolute size, not a share of the data: a
# group only grows, so the rule never moves an image from training into validation as labels accumulate.
SPLIT_GROUP_SIZE = 40


class DatasetError(ValueError):
    """A dataset folder or label set cannot be used."""


@dataclass(frozen=True)
class LabelledImage:
    key: Hashable  # media id for store data, path for folder data
    source: Any  # path or bytes, what `load_rgb_frames` reads
    label: str
    group: str  # source of the image (account, package); never split
    subgroup: str  # finer source (post, file origin), used only for big validation-side groups


def scan_folder(
    root: str | Path, labels: Sequence[str] = LABELS, problems: list[str] | None = None
) -> list[LabelledImage]:
    """`root/<label>/*` images. Groups come from `root/manifest.csv` (`file`, `origin`) when present:
    the origin's first word (package or repository), else each image is its own group.

    A manifest row whose file is not there is skipped and described in `problems` (when given), so one
    stale row never stops a training run.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    manifest = root / "manifest.csv"
    origins = _manifest_origins(manifest)
    items = []
    for label in labels:
        folder = root / label
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            relative = path.relative_to(root).as_posix()
            origin = origins.get(relative, relative)
            items.append(LabelledImage(path, path, label, origin.split(" ")[0], origin))
    if problems is not None:
        found = {item.key.relative_to(root).as_posix() for item in items}
        problems.extend(
            f"{manifest}: row for {name} skipped: no such image under {'/, '.join(labels)}/"
            for name in sorted(set(origins) - found)
        )
    if not items:
        raise DatasetError(f"dataset folder {root} has no images under {', '.join(f'{label}/' for label in labels)}")
    return items


def scan_folders(roots: Sequence[str | Path], labels: Sequence[str] = LABELS) -> tuple[list[LabelledImage], list[str]]:
    """Every folder's images together, and the manifest rows skipped (see `scan_folder`).

    Training needs every class: a class with no image in any folder is a DatasetError naming it.
    """
    items: list[LabelledImage] = []
    problems: list[str] = []
    for root in roots:
        items += scan_folder(root, labels, problems)
    counts = Counter(item.label for item in items)
    empty = [label for label in labels if not counts[label]]
    if empty:
        raise DatasetError(
            f"no {' or '.join(empty)} images in {', '.join(str(root) for root in roots)}: "
            f"every class needs training images (put them in <folder>/{empty[0]}/)"
        )
    return items, problems


def _manifest_origins(manifest: Path) -> dict[str, str]:
    if not manifest.is_file():
        return {}
    with manifest.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if rows and not {"file", "origin"} <= set(rows[0]):
        raise DatasetError(f"{manifest} needs columns file and origin, has {sorted(rows[0])}")
    return {row["file"]: row["origin"] for row in rows if row.get("origin")}


def store_labelled(store) -> list[LabelledImage]:
    """Media with a current human label; group = the account of the first post that carried it.

    The label comes from media_verdict (kept current by triggers): the `current_label` view re-ran its
    MAX(id) subquery per media, 19 s of a 10,000-label retrain.
    """
    rows = store.query(
        """
        SELECT m.id, m.sha256, m.ext, v.human_label AS label,
               (SELECT a.source || ':' || a.handle || '|' || p.id
                  FROM post_media pm JOIN posts p ON p.id = pm.post_id JOIN accounts a ON a.id = p.account_id
                 WHERE pm.media_id = m.id ORDER BY p.id LIMIT 1) AS origin
          FROM media_verdict v JOIN media m ON m.id = v.media_id
         WHERE v.human_label IS NOT NULL AND m.status = 'ok'
         ORDER BY m.id
        """
    )
    items = []
    for row in rows:
        origin = row["origin"] or f"media:{row['id']}|{row['id']}"
        account, post = origin.rsplit("|", 1)
        path = store.blobs.path(row["sha256"], row["ext"])
        items.append(LabelledImage(row["id"], path, row["label"], account, f"{account}|{post}"))
    return items


def _bucket(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_by_group(
    items: Sequence[LabelledImage], validation_fraction: float = VALIDATION_FRACTION
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, validation): a group goes to validation when the hash of its name falls below the fraction;
    a big one only with its sub-groups whose hash does too.

    Adding data never moves an image from training into validation, so a model trained earlier is never
    scored on its own training images when a new version is compared with it.
    """
    sizes = Counter(item.group for item in items)
    train, validation = [], []
    for item in items:
        in_validation = _bucket(item.group) < validation_fraction and (
            sizes[item.group] <= SPLIT_GROUP_SIZE or _bucket(item.subgroup) < validation_fraction
        )
        (validation if in_validation else train).append(item)
    return train, validation


def summarise(items: Sequence[LabelledImage]) -> dict[str, Any]:
    return {
        "images": len(items),
        "per_label": dict(sorted(Counter(item.label for item in items).items())),
        "groups": len({item.group for item in items}),
    }
