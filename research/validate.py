"""Leave-one-origin-out validation of head variants on cached features, with per-origin recall.

Every image is predicted by a head that never saw its origin (package, repository or photo set), so the
numbers estimate how the model does on a new source, not on near-duplicates of its training images.

    python -m research.validate            # the variant grid, table to stdout + research/out/validation.json
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from classifier import LABELS
from research.heads import HeadSettings, fit_head, fit_temperature

# Origins with fewer images than this still count in pooled metrics but are too small to report alone.
MIN_ORIGIN_SIZE_FOR_WORST = 3


@dataclass
class Dataset:
    """Aggregated vectors of training images plus their labels and origin groups."""

    vectors: torch.Tensor
    labels: torch.Tensor
    origins: list[str]
    files: list[str] = field(default_factory=list)
    # Generated images join every fold's training set and are never held out or scored.
    synthetic: torch.Tensor | None = None


@dataclass
class Validation:
    probs: torch.Tensor  # out-of-fold, calibrated with the fitted temperature
    logits: torch.Tensor
    temperature: float
    metrics: dict


def f1_scores(truth: torch.Tensor, predicted: torch.Tensor, classes: int) -> list[float]:
    scores = []
    for label in range(classes):
        true_positive = float(((predicted == label) & (truth == label)).sum())
        denominator = float((predicted == label).sum() + (truth == label).sum())
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return scores


def summarise(truth: torch.Tensor, probs: torch.Tensor, origins: list[str]) -> dict:
    predicted = probs.argmax(dim=1)
    correct = (predicted == truth).float()
    metrics: dict = {
        "accuracy": float(correct.mean()),
        "macro_f1": sum(f1_scores(truth, predicted, len(LABELS))) / len(LABELS),
        "recall": {},
        "origin_mean_recall": {},
        "worst_origins": {},
        "confusion": [[int(((truth == t) & (predicted == p)).sum()) for p in range(len(LABELS))] for t in range(len(LABELS))],
    }
    origin_accuracy = []
    for label, name in enumerate(LABELS):
        members = truth == label
        metrics["recall"][name] = float(correct[members].mean())
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


def leave_one_origin_out(data: Dataset, settings: HeadSettings) -> Validation:
    logits = torch.zeros(len(data.labels), len(LABELS))
    for origin in sorted(set(data.origins)):
        held_out = torch.tensor([o == origin for o in data.origins])
        train_vectors, train_labels = data.vectors[~held_out], data.labels[~held_out]
        train_origins = [o for o, out in zip(data.origins, held_out.tolist()) if not out]
        if data.synthetic is not None:
            synthetic_vectors, synthetic_labels, synthetic_origins = data.synthetic
            train_vectors = torch.cat([train_vectors, synthetic_vectors])
            train_labels = torch.cat([train_labels, synthetic_labels])
            train_origins = train_origins + synthetic_origins
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
