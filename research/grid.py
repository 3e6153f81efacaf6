"""The experiment grid: framings, layers, pooling, view aggregation, weighting, generated data, backbones.

Reads the feature caches of research.extract / research.effnet, cross-validates each variant by origin
and writes the table to stdout and research/out/validation.json.

    nice -n 10 python -m research.grid [--only NAME_SUBSTRING]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field

import torch

from classifier import LABELS
from classifier.features import FeatureSpec
from research.contact_sheet import oof_path
from research.corpus import read_manifest
from research.extract import OUT_DIR, WIDE_LAYERS, WIDE_POOLING, block_slices, cache_path
from research.heads import HeadSettings
from research.synth import read_generated
from research.validate import Dataset, Generated, cross_validate, format_row

WIDE_SPEC = FeatureSpec(layers=WIDE_LAYERS, pooling=WIDE_POOLING)


@dataclass(frozen=True)
class Variant:
    name: str
    cache: str = "multi_view"  # research.extract framing cache; "center_crop" or "multi_view"
    # pad: first view only (= pad_square framing); mean / max: over all views of multi_view.
    aggregate: str = "mean"
    layers: tuple[int, ...] = (22, 29)
    pooling: tuple[str, ...] = ("avg", "max")
    head: HeadSettings = field(default_factory=HeadSettings)
    generated: bool = False
    backbone: str = "vgg16"


def aggregate(views: torch.Tensor, how: str) -> torch.Tensor:
    views = views.float()
    if how == "pad":
        return views[0]
    if how == "mean":
        return views.mean(dim=0)
    if how == "max":
        return views.amax(dim=0)
    raise ValueError(f"unknown view aggregation {how!r}")


def load_vectors(prefix: str, variant: Variant) -> torch.Tensor:
    if variant.backbone == "vgg16":
        cache = torch.load(cache_path(f"{prefix}_{variant.cache}"), weights_only=True)
        columns = torch.cat([torch.arange(s.start, s.stop) for s in block_slices(WIDE_SPEC, variant.layers, variant.pooling)])
        return torch.stack([aggregate(views[:, columns], variant.aggregate) for views in cache["views"]])
    cache = torch.load(cache_path(f"{prefix}_{variant.backbone}_{variant.cache}"), weights_only=True)
    return torch.stack([aggregate(views, variant.aggregate) for views in cache["views"]])


def variants() -> list[Variant]:
    grid = [
        Variant("crop conv4+5 avg, class-weighted", cache="center_crop", aggregate="pad", pooling=("avg",), head=HeadSettings(weighting="class")),
        Variant("pad conv4+5 avg, class-weighted", aggregate="pad", pooling=("avg",), head=HeadSettings(weighting="class")),
        Variant("multi conv4+5 avg, class-weighted", pooling=("avg",), head=HeadSettings(weighting="class")),
        Variant("crop conv4+5 avg+max", cache="center_crop", aggregate="pad"),
        Variant("pad conv4+5 avg+max", aggregate="pad"),
        Variant("multi(mean) conv4+5 avg+max", aggregate="mean"),
        Variant("multi(max) conv4+5 avg+max", aggregate="max"),
        Variant("multi conv5 avg+max", layers=(29,)),
        Variant("multi conv3+4+5 avg+max", layers=(15, 22, 29)),
        Variant("multi conv4+5 max", pooling=("max",)),
        Variant("multi conv4+5, no weighting", head=HeadSettings(weighting="none")),
        Variant("multi conv4+5, class weighting", head=HeadSettings(weighting="class")),
        Variant("multi conv4+5, l2 1e-3", head=HeadSettings(l2=1e-3)),
        Variant("multi conv4+5, l2 1e-1", head=HeadSettings(l2=1e-1)),
        Variant("multi conv4+5, illustration x2", head=HeadSettings(illustration_boost=2.0)),
        Variant("multi conv4+5 + generated", generated=True),
        Variant("multi conv4+5 + generated, illustration x2", generated=True, head=HeadSettings(illustration_boost=2.0)),
        Variant("multi conv3+4+5 + generated", layers=(15, 22, 29), generated=True),
        Variant("lite0 multi avg+max", backbone="lite0"),
        Variant("lite0 pad avg+max", backbone="lite0", aggregate="pad"),
    ]
    return grid


def variant_named(name: str) -> Variant:
    for variant in variants():
        if variant.name == name:
            return variant
    raise KeyError(f"no variant named {name!r} in research.grid.variants()")


def evaluate(variant: Variant, data_cache: dict) -> dict:
    images = data_cache.setdefault("images", read_manifest())
    labels = torch.tensor([image.label_index for image in images])
    data = Dataset(load_vectors("dev", variant), labels, [image.origin for image in images])
    generated = None
    if variant.generated:
        items = read_generated()
        generated = Generated(
            load_vectors("synth", variant),
            torch.tensor([LABELS.index(item.label) for item in items]),
            [item.sources for item in items],
        )
    result = cross_validate(data, variant.head, generated)
    return {"variant": asdict(variant), "metrics": result.metrics, "probs": result.probs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the variants whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results_path = OUT_DIR / "validation.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    data_cache: dict = {}
    for variant in variants():
        if args.only not in variant.name:
            continue
        started = time.monotonic()
        try:
            outcome = evaluate(variant, data_cache)
        except FileNotFoundError as missing:
            print(f"{variant.name:<42} skipped: {missing}")
            continue
        torch.save(outcome["probs"], oof_path(variant.name))
        results[variant.name] = {"variant": outcome["variant"], "metrics": outcome["metrics"]}
        print(format_row(variant.name, outcome["metrics"]), f"({time.monotonic() - started:.0f}s)", flush=True)
        results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
