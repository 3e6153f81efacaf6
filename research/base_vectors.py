"""Build the shipped base-vector file (classifier/default_model/base_vectors.npz) from labelled corpus folders.

Every image of each folder (`<label>/*`, grouped by its `manifest.csv` origins) goes through the shipped
model's own trunk and FeatureSpec, so the vectors carry the model's feature key and a retrain can train on
them with no image at hand. The shipped model's probabilities on the held-out validation origins come from
its head recipe (research.heads) trained on every other base image, so promotion scores the shipped model on
base images it was not trained on (elsewhere: the out-of-fold probabilities of an origin-grouped
cross-validation). Vectors of one folder are cached under research/out/base_vectors/,
so adding a folder later reruns only that folder.

    nice -n 10 python -m research.base_vectors ../shared/corpus/dev [../shared/corpus/train] \
        [--model classifier/default_model/model.pt] [--out classifier/default_model/base_vectors.npz]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch

from classifier import LABELS
from classifier.base_set import BASE_SET_FILE, BaseSet, save_base_set
from classifier.data import scan_folder
from classifier.inference import FeatureRunner, run_classifier
from classifier.model import load_model
from classifier.versions import DEFAULT_MODEL_DIR
from research.corpus import shared_dir
from research.extract import OUT_DIR
from research.cv15 import VARIANTS
from research.grid import variant_named
from research.rich import rich_path, spec_columns
from research.heads import fit_head
from research.train_default import CHOSEN_VARIANT
from research.validate import Dataset, cross_validate

CACHE_DIR = OUT_DIR / "base_vectors"
# The validation part: whole origins, taken in the order of their name's hash (as the product's split does),
# until every class has this share of its images held out; an origin holding more than MAX_ORIGIN_SHARE of a
# class is never held out (the dev corpus's one game and one photo set would take their class's main style
# out of training).
VALIDATION_SHARE = 0.12
MAX_ORIGIN_SHARE = 0.20


def choose_validation(labels: list[str], groups: list[str]) -> list[bool]:
    """Held-out origins: every class gets >= VALIDATION_SHARE of its images where its origins allow."""
    from collections import Counter

    from classifier.data import _bucket

    per_class = Counter(labels)
    by_origin = Counter(zip(groups, labels))
    held: set[str] = set()
    held_count: Counter = Counter()
    for origin in sorted(set(groups), key=lambda name: (_bucket(name), name)):
        counts = {label: by_origin[(origin, label)] for label in LABELS if by_origin[(origin, label)]}
        needed = [label for label in counts if held_count[label] < VALIDATION_SHARE * per_class[label]]
        too_big = any(count > MAX_ORIGIN_SHARE * per_class[label] for label, count in counts.items())
        if needed and not too_big:
            held.add(origin)
            held_count.update(counts)
        if all(held_count[label] >= VALIDATION_SHARE * per_class[label] for label in per_class):
            break
    return [group in held for group in groups]


def rich_folder_vectors(model, folder: Path) -> dict | None:
    """The same data from research.rich's pass over the corpus folder of that name, when it holds the model's
    spec (its views' product vectors, averaged as `aggregate_views` does): the trunk need not run again."""
    path = rich_path(folder.name)
    if not path.is_file():
        return None
    columns = spec_columns(model.spec)
    if columns is None:
        return None
    rich = torch.load(path, weights_only=False)
    by_file = {Path(file).resolve(): index for index, file in enumerate(rich["files"])}
    starts = [0]
    for count in rich["view_counts"]:
        starts.append(starts[-1] + count)
    views = torch.cat([rich["blocks"][block][:, cols] for block, cols in columns], dim=1).float()
    items = [item for item in scan_folder(folder) if Path(item.key).resolve() in by_file]
    rows = [by_file[Path(item.key).resolve()] for item in items]
    return {
        "keys": [str(item.key.relative_to(folder)) for item in items],
        "vectors": torch.stack([views[starts[row] : starts[row + 1]].mean(0) for row in rows]),
        "labels": [item.label for item in items],
        "groups": [item.group for item in items],
        "subgroups": [item.subgroup for item in items],
    }


def folder_vectors(model, folder: Path, threads: int, from_rich: bool = False) -> dict:
    """{"keys", "vectors", "labels", "groups", "subgroups"} of every decodable image in `folder` (cached)."""
    digest = hashlib.sha256(f"{folder.resolve()}|{model.feature_key}".encode()).hexdigest()[:12]
    cache = CACHE_DIR / f"{folder.name}-{digest}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    if from_rich and (data := rich_folder_vectors(model, folder)) is not None:
        print(f"  {folder.name}: {len(data['keys'])} vectors from {rich_path(folder.name)}", flush=True)
        return data
    items = scan_folder(folder)
    torch.set_num_threads(threads)
    runner = FeatureRunner(model, precision="fp32")
    by_key = {item.key: item for item in items}
    kept, vectors, started = [], [], time.monotonic()
    for done, result in enumerate(
        run_classifier(model, [(item.key, item.source) for item in items], runner=runner, batch_size=16, max_frames=4),
        1,
    ):
        if result.error is not None:
            print(f"  skipped {result.key}: {result.error}")
            continue
        kept.append(by_key[result.key])
        vectors.append(result.vector)
        if done % 100 == 0:
            print(f"  {folder.name}: {done}/{len(items)} images, {time.monotonic() - started:.0f} s", flush=True)
    data = {
        "keys": [str(item.key.relative_to(folder)) for item in kept],
        "vectors": torch.stack(vectors),
        "labels": [item.label for item in kept],
        "groups": [item.group for item in kept],
        "subgroups": [item.subgroup for item in kept],
    }
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="labelled corpus folders (dev, train)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR / "model.pt")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR / BASE_SET_FILE)
    parser.add_argument(
        "--head-variant",
        default=CHOSEN_VARIANT,
        help="research.grid variant whose head settings trained the shipped model",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--from-rich", action="store_true", help="take the vectors from research.rich's caches where they hold the spec"
    )
    args = parser.parse_args()
    weights = shared_dir() / "weights" / "vgg16_features_imagenet.pth"
    model = load_model(args.model, lambda: torch.load(weights, map_location="cpu", weights_only=True))
    parts = [folder_vectors(model, folder, args.threads, args.from_rich) for folder in args.folders]
    vectors = torch.cat([part["vectors"] for part in parts])
    labels = [label for part in parts for label in part["labels"]]
    groups = [group for part in parts for group in part["groups"]]
    subgroups = [group for part in parts for group in part["subgroups"]]
    label_indices = torch.tensor([LABELS.index(label) for label in labels])
    torch.set_num_threads(1)
    # default-3's recipes are research.cv15's (dev + train); default-2's were research.grid's.
    settings = VARIANTS.get(args.head_variant) or variant_named(args.head_variant).head
    validation = cross_validate(Dataset(vectors, label_indices, groups), settings)
    held = choose_validation(labels, groups)
    # On the validation part, the shipped recipe trained on every other base image: exactly what a retrain's
    # candidate trains on before the owner's labels, so the promotion measures what the labels add.
    probabilities = validation.probs.clone()
    kept = torch.tensor([not is_held for is_held in held])
    head = fit_head(vectors[kept], label_indices[kept], [g for g, k in zip(groups, kept.tolist()) if k], settings)
    with torch.no_grad():
        probabilities[~kept] = torch.softmax(head(vectors[~kept]) / validation.temperature, dim=1)
    base = BaseSet(
        vectors=vectors,
        labels=labels,
        groups=groups,
        subgroups=subgroups,
        feature_key=model.feature_key,
        model_version=model.version,
        shipped_probabilities=probabilities,
        validation=held,
    )
    path = save_base_set(args.out, base)
    metrics = validation.metrics
    print(
        f"{path}: {len(labels)} vectors x {vectors.shape[1]} ({base.per_label()}), {len(set(groups))} origins, "
        f"{path.stat().st_size / 1e6:.2f} MB; feature key {model.feature_key}"
    )
    held = [label for label, is_held in zip(labels, base.validation) if is_held]
    print(
        f"validation part: {len(set(g for g, h in zip(groups, base.validation) if h))} origins, "
        f"{ {label: held.count(label) for label in LABELS} }"
    )
    print(
        f"shipped recipe out-of-fold: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, "
        f"illustration recall {metrics['per_class']['illustration']['recall']:.3f}"
    )


if __name__ == "__main__":
    main()
