"""Train the shipped default head on the whole dev corpus (+ generated images) with the chosen recipe.

The recipe is the variant research.grid validated best; its origin-grouped cross-validation supplies the
temperature and the metrics stored in the model file (the final head itself has seen every origin, so
scoring it on dev would only measure memory).

    nice -n 10 python -m research.train_default [--variant NAME]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from classifier.features import FeatureExtractor, FeatureSpec
from classifier.model import IMAGENET_BACKBONE, ImageClassifier, save_model
from classifier.versions import DEFAULT_MODEL_DIR
from classifier.vgg import make_features
from research.corpus import read_manifest
from research.grid import evaluate, generated_data, load_vectors, variant_named
from research.heads import fit_head
from research.synth import read_generated


DEFAULT_MODEL_FILE = DEFAULT_MODEL_DIR / "model.pt"
CHOSEN_VARIANT = "multi conv3+4+5 + ui + stylised, ill. x5 + noise+flat (stats l2 0)"
DEFAULT_VERSION = "default-2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=CHOSEN_VARIANT)
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_FILE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    variant = variant_named(args.variant)
    validation = evaluate(variant, {})
    images = read_manifest()
    vectors = load_vectors("dev", variant)
    labels = torch.tensor([image.label_index for image in images])
    origins = [image.origin for image in images]
    generated = generated_data(variant)
    if generated is not None:
        vectors = torch.cat([vectors, generated.vectors])
        labels = torch.cat([labels, generated.labels])
        origins += generated.origin_groups()
    head = fit_head(vectors, labels, origins, variant.head)
    framing = "pad_square" if variant.aggregate == "pad" else variant.cache
    spec = FeatureSpec(layers=variant.layers, pooling=variant.pooling, framing=framing, stats=variant.stats)
    # The trunk here is a placeholder with the right shapes: the file stores only the head, and loading
    # attaches the ImageNet trunk from the weights chain.
    extractor = FeatureExtractor(make_features(), spec)
    model = ImageClassifier(
        extractor,
        head,
        temperature=validation["metrics"]["temperature"],
        version=DEFAULT_VERSION,
        backbone=IMAGENET_BACKBONE,
        metrics={"validation": "origin-grouped 12-fold cross-validation on the dev corpus", **validation["metrics"]},
        data_summary={
            "dev_images": dict(Counter(image.label for image in images)),
            "dev_origins": len(set(image.origin for image in images)),
            "generated_images": {name: len(read_generated(name)) for name in variant.generated},
            "recipe": args.variant,
            "head": {"l2": variant.head.l2, "stats_l2": variant.head.tail_l2, "weighting": variant.head.weighting,
                     "illustration_boost": variant.head.illustration_boost},
        },
    )
    save_model(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(json.dumps({k: validation["metrics"][k] for k in ("accuracy", "macro_f1", "recall", "temperature")}, indent=1))


if __name__ == "__main__":
    main()
