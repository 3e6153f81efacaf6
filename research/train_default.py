"""Train the shipped default model on dev/ + train/ with the recipe research.cv15 validated best.

The out-of-fold predictions of that recipe (origin-grouped 4-fold CV, research/out/cv15.json) supply the
temperature, the review policy's thresholds and the metrics stored in the model file; the final head itself
has seen every origin, so scoring it on the corpus would only measure memory. With `--finetuned`, the
conv5 weights and head of research.finetune's final run ship instead (conv5 as an fp16 backbone delta).
The out-of-fold probabilities are also written to research/out/default_oof.npz (file, label, origin,
probabilities) for the shipped base-vector file.

    nice -n 10 python -m research.train_default [--variant NAME] [--finetuned research/out/finetune_final.pt]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from classifier import LABELS
from classifier.evaluate import compute_metrics
from classifier.features import FeatureExtractor
from classifier.model import IMAGENET_BACKBONE, ImageClassifier, LinearHead, save_model
from classifier.policy import PolicyTargets, fit_policy
from classifier.versions import DEFAULT_MODEL_DIR
from classifier.vgg import make_features
from research.cv15 import FOLDS, VARIANTS, folds_of, load_corpus
from research.extract import OUT_DIR
from research.heads import fit_head
from research.pool4 import WIDE_SPEC

DEFAULT_MODEL_FILE = DEFAULT_MODEL_DIR / "model.pt"
CHOSEN_VARIANT = "ill x2, l2 1e-1"
DEFAULT_VERSION = "default-3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=CHOSEN_VARIANT, choices=sorted(VARIANTS))
    parser.add_argument("--finetuned", type=Path, help="research.finetune --final output to ship instead")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_FILE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    validation = json.loads((OUT_DIR / "cv15.json").read_text())
    if args.finetuned:
        finetuned = torch.load(args.finetuned, weights_only=False)
        name = finetuned["name"]
    else:
        finetuned, name = None, args.variant
    if name not in validation:
        raise SystemExit(f"no cross-validation of {name!r} in {OUT_DIR / 'cv15.json'}: run research.cv15 first")
    result = validation[name]
    data = load_corpus()
    truth = [LABELS[i] for i in data.labels.tolist()]
    probabilities = np.array(result["probabilities"])
    policy = fit_policy(probabilities, truth, LABELS, PolicyTargets())

    spec = WIDE_SPEC
    extractor = FeatureExtractor(make_features(), spec)
    if finetuned is None:
        head = fit_head(data.vectors, data.labels, data.origins, VARIANTS[args.variant])
        delta = {}
    else:
        head = LinearHead(extractor.dim, len(LABELS))
        head.load_state_dict(finetuned["head"])
        delta = {key: value.to(torch.float16) for key, value in finetuned["conv5"].items()}
    metrics = compute_metrics(truth, [LABELS[i] for i in probabilities.argmax(1)])
    fold = folds_of(data.origins)
    model = ImageClassifier(
        extractor,
        head.eval(),
        temperature=result["temperature"],
        version=DEFAULT_VERSION,
        backbone=IMAGENET_BACKBONE,
        backbone_delta=delta,
        policy=policy,
        metrics={
            "validation": f"origin-grouped {FOLDS}-fold cross-validation on dev/ + train/ (research.cv15)",
            **metrics,
            "temperature": result["temperature"],
            "by_corpus": result["by_corpus"],
            "feed": {
                key: value for key, value in result["feed_nested"].items() if key != "floor_and_feed_threshold_per_fold"
            },
            "feed_validation": "each fold decided by thresholds fitted on the other folds' out-of-fold predictions",
            "per_origin": result["per_origin"],
        },
        data_summary={
            "images": dict(Counter(truth)),
            "origins": len(set(data.origins)),
            "corpora": {corpus: count for corpus, count in Counter(data.corpora).items()},
            "views": sum(data.view_counts),
            "recipe": name,
            "folds": {str(k): v for k, v in Counter(fold).items()},
        },
    )
    save_model(model, args.out)
    # Beside the model: its version, for readers that must not load torch (`illustfeed status`).
    (Path(args.out).parent / "VERSION").write_text(f"{DEFAULT_VERSION}\n")
    np.savez(
        OUT_DIR / "default_oof.npz",
        files=np.array(data.files),
        labels=np.array(truth),
        origins=np.array(data.origins),
        probabilities=probabilities.astype(np.float32),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.monotonic() - started:.0f} s; policy {policy}")
    print(
        json.dumps(
            {
                "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "illustration_recall": metrics["per_class"]["illustration"]["recall"],
                "feed": model.metrics["feed"],
                "temperature": result["temperature"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
