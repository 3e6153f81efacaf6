"""Origin-grouped 4-fold cross-validation over dev/ + train/ for issue 15: frozen-trunk heads (and, from
research.finetune, fine-tuned conv5 out-of-fold predictions), metrics, feed figures and per-origin rows.

Folds come from `research.validate.origin_folds` (origins dealt largest first): every image is scored by a
model trained without any image of its origin. The review policy's figures are honest twice over: for
each fold the thresholds are fitted on the other folds' out-of-fold predictions only, then applied to it.

    nice -n 10 python -m research.cv15 [--variant NAME ...] [--finetuned research/out/finetune_oof.pt]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from classifier import LABELS
from classifier.evaluate import compute_metrics, per_origin_results
from classifier.policy import PolicyTargets, decide, feed_figures, figures_of_decisions, fit_policy
from classifier.train import fit_temperature
from research.extract import OUT_DIR
from research.heads import HeadSettings, fit_head
from research.pool4 import CORPORA, wide_path
from research.validate import origin_folds

FOLDS = 4
STATS_COLUMNS = 2
VARIANTS = {
    # default-2's head recipe on the new data.
    "ill x5": HeadSettings(l2=1e-2, illustration_boost=5.0, tail_columns=STATS_COLUMNS, tail_l2=0.0),
    "ill x2": HeadSettings(l2=1e-2, illustration_boost=2.0, tail_columns=STATS_COLUMNS, tail_l2=0.0),
    "ill x1": HeadSettings(l2=1e-2, illustration_boost=1.0, tail_columns=STATS_COLUMNS, tail_l2=0.0),
    "ill x2, l2 1e-1": HeadSettings(l2=1e-1, illustration_boost=2.0, tail_columns=STATS_COLUMNS, tail_l2=0.0),
    "ill x2, l2 1e-3": HeadSettings(l2=1e-3, illustration_boost=2.0, tail_columns=STATS_COLUMNS, tail_l2=0.0),
}
# Today's borderline rule (config defaults), for comparison with the fitted policy.
BORDERLINE_CONFIDENCE, BORDERLINE_MARGIN = 0.6, 0.15


@dataclass
class Corpus:
    vectors: torch.Tensor  # [N, D] per image (views averaged)
    labels: torch.Tensor
    origins: list[str]
    corpora: list[str]
    files: list[str]
    view_counts: list[int]


def load_corpus(corpora_wanted: tuple[str, ...] = CORPORA, aggregate: str = "mean") -> Corpus:
    """Per-image vectors: `mean` of the views (the product's `aggregate_views`), or `whole_half`: the
    whole-image view weighs half and the tiles share the other half (a research variant: a post captured
    around a drawing is told apart only by the whole frame, and with 3 tiles the mean gives it a quarter)."""
    vectors, labels, origins, corpora, files, counts = [], [], [], [], [], []
    for corpus in corpora_wanted:
        data = torch.load(wide_path(corpus), weights_only=False)
        per_view = data["vectors"].float()
        start = 0
        for count in data["view_counts"]:
            views = per_view[start : start + count]
            if aggregate == "whole_half" and count > 1:
                vectors.append(0.5 * views[0] + 0.5 * views[1:].mean(0))
            else:
                vectors.append(views.mean(0))
            start += count
        labels += [LABELS.index(label) for label in data["labels"]]
        origins += data["origins"]
        corpora += [corpus] * len(data["labels"])
        files += data["files"]
        counts += data["view_counts"]
    return Corpus(torch.stack(vectors), torch.tensor(labels), origins, corpora, files, counts)


def folds_of(origins: list[str]) -> list[int]:
    """Fold index of every image."""
    fold_of_origin = {origin: index for index, fold in enumerate(origin_folds(origins, FOLDS)) for origin in fold}
    return [fold_of_origin[origin] for origin in origins]


def head_oof_logits(data: Corpus, settings: HeadSettings, fold: list[int]) -> torch.Tensor:
    logits = torch.zeros(len(data.labels), len(LABELS))
    fold_tensor = torch.tensor(fold)
    for held in range(FOLDS):
        out = fold_tensor == held
        train_origins = [o for o, f in zip(data.origins, fold) if f != held]
        head = fit_head(data.vectors[~out], data.labels[~out], train_origins, settings)
        with torch.no_grad():
            logits[out] = head(data.vectors[out])
    return logits


def borderline_figures(truth: list[str], probabilities: np.ndarray) -> dict:
    """Feed figures under today's rule: review when confidence < 0.6 or top-2 margin < 0.15."""
    ranked = np.sort(probabilities, axis=1)
    review = (ranked[:, -1] < BORDERLINE_CONFIDENCE) | (ranked[:, -1] - ranked[:, -2] < BORDERLINE_MARGIN)
    predicted = [LABELS[i] for i in probabilities.argmax(1)]
    fed = [t for t, p, r in zip(truth, predicted, review) if not r and p == "illustration"]
    lost = sum(1 for t, p, r in zip(truth, predicted, review) if t == "illustration" and not r and p != "illustration")
    return {
        "review_rate": float(review.mean()),
        "feed_precision": sum(t == "illustration" for t in fed) / max(1, len(fed)),
        "illustrations_lost": lost,
        "illustrations_in_feed": sum(t == "illustration" for t in fed),
        "illustrations": sum(t == "illustration" for t in truth),
    }


def nested_policy_figures(truth: list[str], probabilities: np.ndarray, fold: list[int], targets: PolicyTargets) -> dict:
    """Each fold decided by thresholds fitted on the other folds' out-of-fold predictions; figures pooled."""
    fold = np.array(fold)
    if len(set(fold.tolist())) < 2:
        return None  # one fold alone has no other folds to fit on
    decisions: list = [None] * len(truth)
    thresholds = []
    for held in sorted(set(fold.tolist())):
        out = fold == held
        policy = fit_policy(probabilities[~out], [t for t, o in zip(truth, out) if not o], LABELS, targets)
        for index in np.flatnonzero(out):
            decisions[index] = decide(probabilities[index], LABELS, policy)
        thresholds.append((round(policy.floor, 4), round(policy.feed_threshold, 4)))
    return {**figures_of_decisions(truth, decisions), "floor_and_feed_threshold_per_fold": thresholds}


def summary(name: str, data: Corpus, logits: torch.Tensor, fold: list[int], targets: PolicyTargets) -> dict:
    temperature = fit_temperature(logits, data.labels)
    probabilities = torch.softmax(logits / temperature, 1).numpy()
    truth = [LABELS[i] for i in data.labels.tolist()]
    predicted = [LABELS[i] for i in probabilities.argmax(1)]
    metrics = compute_metrics(truth, predicted)
    by_corpus = {}
    for corpus in sorted(set(data.corpora)):
        members = [i for i, c in enumerate(data.corpora) if c == corpus]
        part = compute_metrics([truth[i] for i in members], [predicted[i] for i in members])
        by_corpus[corpus] = {
            "accuracy": part["accuracy"],
            "macro_f1": part["macro_f1"],
            "illustration_recall": part["per_class"]["illustration"]["recall"],
        }
    policy = fit_policy(probabilities, truth, LABELS, targets)
    return {
        "name": name,
        "temperature": temperature,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "recall": {label: metrics["per_class"][label]["recall"] for label in LABELS},
        "confusion": metrics["confusion"],
        "by_corpus": by_corpus,
        "feed_nested": nested_policy_figures(truth, probabilities, fold, targets),
        "feed_fitted_on_all": {**feed_figures(truth, probabilities, LABELS, policy), "policy": policy.to_dict()},
        "feed_borderline_rule": borderline_figures(truth, probabilities),
        "per_origin": per_origin_results(truth, predicted, data.origins),
        "probabilities": probabilities.tolist(),
        "logits": logits.tolist(),
    }


def subset(data: Corpus, rows: list[int]) -> Corpus:
    return Corpus(
        data.vectors[rows],
        data.labels[rows],
        [data.origins[i] for i in rows],
        [data.corpora[i] for i in rows],
        [data.files[i] for i in rows],
        [data.view_counts[i] for i in rows],
    )


def format_summary(result: dict) -> str:
    recall = result["recall"]
    nested = result["feed_nested"] or result["feed_fitted_on_all"]
    rule = result["feed_borderline_rule"]
    return (
        f"{result['name']:<28} acc {result['accuracy']:.3f} F1 {result['macro_f1']:.3f} "
        f"ill {recall['illustration']:.3f} scr {recall['screenshot']:.3f} pho {recall['photo']:.3f} "
        f"T {result['temperature']:.2f} | dev acc {result['by_corpus']['dev']['accuracy']:.3f} "
        f"train acc {result['by_corpus'].get('train', {}).get('accuracy', float('nan')):.3f} | policy (nested): prec "
        f"{nested['feed_precision'] or 0:.3f} lost {nested['illustrations_lost']}/{nested['illustrations']} "
        f"review {nested['review_rate']:.3f} | rule: prec {rule['feed_precision']:.3f} "
        f"lost {rule['illustrations_lost']} review {rule['review_rate']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument("--corpus", action="append", choices=CORPORA, help="default: all (a trial on fewer)")
    parser.add_argument("--aggregate", choices=("mean", "whole_half"), default="mean")
    parser.add_argument("--finetuned", action="append", default=[], help="out-of-fold logits file of research.finetune")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_corpus(tuple(args.corpus or CORPORA), args.aggregate)
    fold = folds_of(data.origins)
    print(
        f"{len(data.labels)} images, {sum(data.view_counts)} views, {len(set(data.origins))} origins, "
        f"fold sizes {sorted(Counter(fold).values())}",
        flush=True,
    )
    targets = PolicyTargets()
    results = []
    for name in args.variant or list(VARIANTS):
        started = time.monotonic()
        logits = head_oof_logits(data, VARIANTS[name], fold)
        label = name if args.aggregate == "mean" else f"{name}, whole view = half"
        results.append(summary(label, data, logits, fold, targets))
        print(format_summary(results[-1]) + f"  ({time.monotonic() - started:.0f} s)", flush=True)
    for path in args.finetuned:
        saved = torch.load(path, weights_only=False)
        if saved["files"] != data.files:
            raise SystemExit(f"{path} scores other images than the caches")
        # Only the folds fine-tuned so far; every model compared on exactly those images.
        rows = [i for i in range(len(data.labels)) if not torch.isnan(saved["logits"][i]).any()]
        done = sorted({fold[i] for i in rows})
        part, part_fold = subset(data, rows), [fold[i] for i in rows]
        suffix = f" [folds {','.join(map(str, done))}]"
        for name, logits in (
            (saved["name"], saved["logits"][rows]),
            ("linear probe, same split", saved["probe_logits"][rows]),
            *[
                (f"frozen {r['name']}", torch.tensor(r["logits"])[rows])
                for r in results[: len(args.variant or VARIANTS)]
            ],
        ):
            results.append(summary(name + suffix, part, logits, part_fold, targets))
            print(format_summary(results[-1]), flush=True)
    merge_results(
        OUT_DIR / ("cv15.json" if not args.corpus or set(args.corpus) == set(CORPORA) else "cv15_trial.json"), results
    )


def merge_results(target: Path, results: list[dict]) -> None:
    """Add (or replace, by name) these results in a JSON file of earlier ones."""
    existing = json.loads(target.read_text()) if target.is_file() else {}
    existing.update({result["name"]: result for result in results})
    target.write_text(json.dumps(existing))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
