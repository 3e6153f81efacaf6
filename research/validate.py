"""Leave-one-origin-out validation of head variants on cached features, with per-origin recall.

Every image is predicted by a head that never saw its origin (package, repository or photo set), so the
numbers estimate how the model does on a new source, not on near-duplicates of its training images.

    python -m research.validate            # the variant grid, table to stdout + research/out/validation.json
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from classifier import LABELS
from classifier.evaluate import compute_metrics
from classifier.train import fit_temperature
from research.heads import HeadSettings, fit_head

# Origins with fewer images than this still count in pooled metrics but are too small to report alone.
MIN_ORIGIN_SIZE_FOR_WORST = 3


@dataclass
class Dataset:
    """Aggregated vectors of images plus their labels and origin groups."""

    vectors: torch.Tensor
    labels: torch.Tensor
    origins: list[str]


@dataclass
class Generated:
    """Generated training images: they join every fold whose held-out origins they were not made from."""

    vectors: torch.Tensor
    labels: torch.Tensor
    sources: list[tuple[str, ...]]

    def origin_groups(self) -> list[str]:
        """Weighting groups: images generated from the same dev origins share one group's weight."""
        return ["generated:" + "+".join(sources) for sources in self.sources]


@dataclass
class Validation:
    probs: torch.Tensor  # out-of-fold, calibrated with the fitted temperature
    logits: torch.Tensor
    temperature: float
    metrics: dict


def summarise(truth: torch.Tensor, probs: torch.Tensor, origins: list[str]) -> dict:
    predicted = probs.argmax(dim=1)
    correct = (predicted == truth).float()
    metrics = compute_metrics([LABELS[t] for t in truth.tolist()], [LABELS[p] for p in predicted.tolist()])
    metrics.update(recall={}, origin_mean_recall={}, worst_origins={})
    origin_accuracy = []
    for label, name in enumerate(LABELS):
        members = truth == label
        metrics["recall"][name] = metrics["per_class"][name]["recall"]
        per_origin: dict[str, list[float]] = defaultdict(list)
        for index in torch.nonzero(members).flatten().tolist():
            per_origin[origins[index]].append(float(correct[index]))
        recalls = {origin: sum(hits) / len(hits) for origin, hits in per_origin.items()}
        origin_accuracy.extend(recalls.values())
        metrics["origin_mean_recall"][name] = sum(recalls.values()) / len(recalls)
        sized = sorted(
            (recall, origin, len(per_origin[origin]))
            for origin, recall in recalls.items()
            if len(per_origin[origin]) >= MIN_ORIGIN_SIZE_FOR_WORST
        )
        metrics["worst_origins"][name] = [f"{origin} {recall:.2f} (n={n})" for recall, origin, n in sized[:3]]
    # Each (origin, class) group weighs the same: the dev set's two giant origins stop dominating.
    metrics["origin_balanced_accuracy"] = sum(origin_accuracy) / len(origin_accuracy)
    return metrics


def origin_folds(origins: list[str], fold_count: int) -> list[set[str]]:
    """Origins dealt into folds, largest first, each to the currently smallest fold (grouped k-fold)."""
    sizes = Counter(origins)
    folds: list[set[str]] = [set() for _ in range(fold_count)]
    totals = [0] * fold_count
    for origin, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        smallest = totals.index(min(totals))
        folds[smallest].add(origin)
        totals[smallest] += size
    return [fold for fold in folds if fold]


def cross_validate(
    data: Dataset, settings: HeadSettings, generated: Generated | None = None, fold_count: int = 12
) -> Validation:
    """Grouped k-fold by origin: every image is scored by a head trained without any image of its origin."""
    logits = torch.zeros(len(data.labels), len(LABELS))
    for held_origins in origin_folds(data.origins, fold_count):
        held_out = torch.tensor([origin in held_origins for origin in data.origins])
        train_vectors, train_labels = data.vectors[~held_out], data.labels[~held_out]
        train_origins = [o for o, out in zip(data.origins, held_out.tolist()) if not out]
        if generated is not None:
            # A generated image made from a held-out origin would leak it into training.
            usable = torch.tensor([not held_origins.intersection(sources) for sources in generated.sources])
            train_vectors = torch.cat([train_vectors, generated.vectors[usable]])
            train_labels = torch.cat([train_labels, generated.labels[usable]])
            train_origins += [group for group, ok in zip(generated.origin_groups(), usable.tolist()) if ok]
        head = fit_head(train_vectors, train_labels, train_origins, settings)
        with torch.no_grad():
            logits[held_out] = head(data.vectors[held_out].float())
    temperature = fit_temperature(logits, data.labels)
    probs = torch.softmax(logits / temperature, dim=1)
    metrics = summarise(data.labels, probs, data.origins)
    metrics["temperature"] = temperature
    metrics["nll"] = float(torch.nn.functional.nll_loss(probs.clamp_min(1e-9).log(), data.labels))
    return Validation(probs, logits, temperature, metrics)


def format_row(name: str, metrics: dict) -> str:
    recall, origin_recall = metrics["recall"], metrics["origin_mean_recall"]
    return (
        f"{name:<42} acc {metrics['accuracy']:.3f}  F1 {metrics['macro_f1']:.3f}  "
        f"obal {metrics['origin_balanced_accuracy']:.3f}  "
        + "  ".join(f"{n[:5]} {recall[n]:.3f}/{origin_recall[n]:.3f}" for n in LABELS)
        + f"  T {metrics['temperature']:.2f}"
    )
