"""The experiment grid: framings, layers, pooling, view aggregation, weighting, generated data, backbones.

Reads the feature caches of research.extract / research.effnet, cross-validates each variant by origin
and writes the table to stdout and research/out/validation.json.

    nice -n 10 python -m research.grid [--only NAME_SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from classifier import LABELS
from classifier.features import IMAGE_STATS, FeatureSpec
from research.contact_sheet import oof_path
from research.corpus import read_manifest
from research.extract import OUT_DIR, WIDE_LAYERS, WIDE_POOLING, block_slices, cache_path
from research.heads import HeadSettings
from research.image_stats import stats_path
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
    generated: tuple[str, ...] = ()  # research.synth sets added to every fold's training data
    backbone: str = "vgg16"
    # classifier.features.IMAGE_STATS columns (research.image_stats caches), aggregated like the views.
    stats: tuple[str, ...] = ()
    # multi_view only: near-square images (one view) also get the centre-crop view (framing multi_view_center).
    square_center: bool = False


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
        # "a+b": each image's views from both framing caches, aggregated together.
        names = variant.cache.split("+")
        columns = torch.cat(
            [torch.arange(s.start, s.stop) for s in block_slices(WIDE_SPEC, variant.layers, variant.pooling)]
        )
        caches = [
            [
                views[:, columns].float()
                for views in torch.load(cache_path(f"{prefix}_{name}"), weights_only=True)["views"]
            ]
            for name in names
        ]
        if variant.stats:
            for index, name in enumerate(names):
                stats = torch.load(stats_path(prefix, name), weights_only=True)
                picks = [stats["stats"].index(stat) for stat in variant.stats]
                caches[index] = [
                    torch.cat([conv, extra[:, picks]], dim=1) for conv, extra in zip(caches[index], stats["views"])
                ]
        if variant.square_center:
            crops = load_vectors(prefix, replace(variant, cache="center_crop", aggregate="pad", square_center=False))
            caches = [
                [views if len(views) > 1 else torch.cat([views, crop[None]]) for views, crop in zip(caches[0], crops)]
            ]
        return torch.stack([aggregate(torch.cat(views), variant.aggregate) for views in zip(*caches)])
    cache = torch.load(cache_path(f"{prefix}_{variant.backbone}_{variant.cache}"), weights_only=True)
    return torch.stack([aggregate(views, variant.aggregate) for views in cache["views"]])


def variants() -> list[Variant]:
    grid = [
        Variant(
            "crop conv4+5 avg, class-weighted",
            cache="center_crop",
            aggregate="pad",
            pooling=("avg",),
            head=HeadSettings(weighting="class"),
        ),
        Variant(
            "pad conv4+5 avg, class-weighted", aggregate="pad", pooling=("avg",), head=HeadSettings(weighting="class")
        ),
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
        Variant("multi conv4+5 + ui", generated=("ui",)),
        Variant("multi conv4+5 + ui, illustration x2", generated=("ui",), head=HeadSettings(illustration_boost=2.0)),
        Variant("multi conv3+4+5 + ui", layers=(15, 22, 29), generated=("ui",)),
        Variant("multi conv3+4+5 + ui + stylised", layers=(15, 22, 29), generated=("ui", "stylised")),
        Variant(
            "multi conv3+4+5 + ui + stylised, illustration x2",
            layers=(15, 22, 29),
            generated=("ui", "stylised"),
            head=HeadSettings(illustration_boost=2.0),
        ),
        Variant(
            "multi conv4+5 + ui + stylised, illustration x2",
            generated=("ui", "stylised"),
            head=HeadSettings(illustration_boost=2.0),
        ),
        Variant(
            "pad conv3+4+5 + ui + stylised, illustration x2",
            aggregate="pad",
            layers=(15, 22, 29),
            generated=("ui", "stylised"),
            head=HeadSettings(illustration_boost=2.0),
        ),
        Variant(
            "crop conv3+4+5, illustration x2",
            cache="center_crop",
            aggregate="pad",
            layers=(15, 22, 29),
            head=HeadSettings(illustration_boost=2.0),
        ),
        Variant("multi conv3+4+5, illustration x2", layers=(15, 22, 29), head=HeadSettings(illustration_boost=2.0)),
        Variant(
            "multi+crop conv3+4+5, illustration x2",
            cache="multi_view+center_crop",
            layers=(15, 22, 29),
            head=HeadSettings(illustration_boost=2.0),
        ),
        Variant(
            "multi+crop conv3+4+5, illustration x3",
            cache="multi_view+center_crop",
            layers=(15, 22, 29),
            head=HeadSettings(illustration_boost=3.0),
        ),
        Variant(
            "crop conv3+4+5, illustration x3",
            cache="center_crop",
            aggregate="pad",
            layers=(15, 22, 29),
            head=HeadSettings(illustration_boost=3.0),
        ),
        Variant(
            "multi conv3+4+5 + ui + stylised, illustration x3",
            layers=(15, 22, 29),
            generated=("ui", "stylised"),
            head=HeadSettings(illustration_boost=3.0),
        ),
        *stats_variants(),
        Variant("lite0 multi avg+max", backbone="lite0"),
        Variant("lite0 multi avg+max, illustration x2", backbone="lite0", head=HeadSettings(illustration_boost=2.0)),
        Variant("lite0 pad avg+max", backbone="lite0", aggregate="pad"),
    ]
    return grid


SHIPPED_1 = dict(layers=(15, 22, 29), generated=("ui", "stylised"), head=HeadSettings(illustration_boost=3.0))
ALL_STATS = IMAGE_STATS


def stats_variants() -> list[Variant]:
    """Issue 4: pixel statistics and a centre view for near-square images on top of the shipped recipe."""
    return [
        Variant("multi conv3+4+5 + ui + stylised, ill. x3 + stats", stats=ALL_STATS, **SHIPPED_1),
        Variant("multi conv3+4+5 + ui + stylised, ill. x3 + square centre", square_center=True, **SHIPPED_1),
        Variant(
            "multi conv3+4+5 + ui + stylised, ill. x3 + stats + square centre",
            stats=ALL_STATS,
            square_center=True,
            **SHIPPED_1,
        ),
        *[
            Variant(
                f"multi conv3+4+5 + ui + stylised, ill. x3 + stats (stats l2 {tail_l2:g})",
                stats=ALL_STATS,
                **{
                    **SHIPPED_1,
                    "head": HeadSettings(illustration_boost=3.0, tail_columns=len(ALL_STATS), tail_l2=tail_l2),
                },
            )
            for tail_l2 in (1e-3, 1e-4, 0.0)
        ],
        *[
            Variant(
                f"multi conv3+4+5 + ui + stylised, ill. x{boost:g} + {label} (stats l2 {tail_l2:g})",
                stats=stats,
                **{
                    **SHIPPED_1,
                    "head": HeadSettings(illustration_boost=boost, tail_columns=len(stats), tail_l2=tail_l2),
                },
            )
            for boost in (3.0, 4.0)
            for label, stats in (
                ("stats", ALL_STATS),
                ("noise+colours+sat", ("colours", "noise", "saturation", "saturation_spread")),
                ("noise+flat", ("flat", "noise")),
            )
            for tail_l2 in (1e-4, 0.0)
            if not (boost == 3.0 and label == "stats")
        ],
        *[
            Variant(
                f"multi conv3+4+5 + ui + stylised, ill. x{boost:g} + {label} (stats l2 0)",
                stats=stats,
                **{**SHIPPED_1, "head": HeadSettings(illustration_boost=boost, tail_columns=len(stats), tail_l2=0.0)},
            )
            for boost, label, stats in (
                (4.0, "noise+flat+edges", ("flat", "noise", "edges")),
                (4.0, "noise+flat+colours", ("colours", "flat", "noise")),
                (5.0, "noise+flat", ("flat", "noise")),
            )
        ],
    ]


def variant_named(name: str) -> Variant:
    for variant in variants():
        if variant.name == name:
            return variant
    raise KeyError(f"no variant named {name!r} in research.grid.variants()")


def generated_data(variant: Variant) -> Generated | None:
    if not variant.generated:
        return None
    items = [item for name in variant.generated for item in read_generated(name)]
    return Generated(
        torch.cat([load_vectors("synth" if name == "ui" else f"synth_{name}", variant) for name in variant.generated]),
        torch.tensor([LABELS.index(item.label) for item in items]),
        [item.sources for item in items],
    )


def evaluate(variant: Variant, data_cache: dict) -> dict:
    images = data_cache.setdefault("images", read_manifest())
    labels = torch.tensor([image.label_index for image in images])
    data = Dataset(load_vectors("dev", variant), labels, [image.origin for image in images])
    generated = generated_data(variant)
    result = cross_validate(data, variant.head, generated)
    return {"variant": asdict(variant), "metrics": result.metrics, "probs": result.probs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the variants whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)  # heads are small; leave the second core to feature extraction
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
