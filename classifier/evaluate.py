"""Scoring a classifier: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, and its PNG.

Illustration recall comes first in every human-readable report: a missed illustration is the costly error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

from classifier import LABELS


def compute_metrics(
    true_labels: Sequence[str], predicted_labels: Sequence[str], labels: Sequence[str] = LABELS
) -> dict:
    """`{"accuracy", "macro_f1", "labels", "per_class": {label: {precision, recall, f1, support}}, "confusion"}`.

    `confusion[i][j]` counts images whose true label is `labels[i]` and predicted label `labels[j]`.
    A class with no predictions has precision 0 (and with no support, recall 0), as scikit-learn reports it.
    """
    if len(true_labels) != len(predicted_labels):
        raise ValueError(f"{len(true_labels)} true labels but {len(predicted_labels)} predictions")
    labels = list(labels)
    position = {label: index for index, label in enumerate(labels)}
    for label in list(true_labels) + list(predicted_labels):
        if label not in position:
            raise ValueError(f"label {label!r} is not one of {labels}")
    confusion = [[0] * len(labels) for _ in labels]
    for true, predicted in zip(true_labels, predicted_labels):
        confusion[position[true]][position[predicted]] += 1
    per_class = {}
    for index, label in enumerate(labels):
        hits = confusion[index][index]
        support = sum(confusion[index])
        predicted_count = sum(row[index] for row in confusion)
        precision = hits / predicted_count if predicted_count else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    total = len(true_labels)
    return {
        "accuracy": sum(confusion[i][i] for i in range(len(labels))) / total if total else 0.0,
        "macro_f1": sum(scores["f1"] for scores in per_class.values()) / len(labels),
        "labels": labels,
        "per_class": per_class,
        "confusion": confusion,
    }


def per_origin_results(
    true_labels: Sequence[str], predicted_labels: Sequence[str], origins: Sequence[str], labels: Sequence[str] = LABELS
) -> list[dict]:
    """One row per (true class, origin): `{"label", "origin", "images", "recall", "predicted_as"}`, classes in
    `labels` order, biggest origin first; `predicted_as` counts the wrong calls by predicted class."""
    groups: dict[tuple[str, str], list[str]] = {}
    for true, predicted, origin in zip(true_labels, predicted_labels, origins, strict=True):
        groups.setdefault((true, origin), []).append(predicted)
    rows = []
    for (true, origin), predictions in groups.items():
        wrong: dict[str, int] = {}
        for predicted in predictions:
            if predicted != true:
                wrong[predicted] = wrong.get(predicted, 0) + 1
        rows.append(
            {
                "label": true,
                "origin": origin,
                "images": len(predictions),
                "recall": (len(predictions) - sum(wrong.values())) / len(predictions),
                "predicted_as": dict(sorted(wrong.items(), key=lambda item: -item[1])),
            }
        )
    order = {label: index for index, label in enumerate(labels)}
    return sorted(rows, key=lambda row: (order[row["label"]], -row["images"], row["origin"]))


def format_per_origin(rows: Sequence[dict]) -> str:
    """The per-origin rows as text: class, origin, images, recall, and what the misses were called."""
    lines = [f"{'class':<14}{'images':>7}{'recall':>8}  origin (missed as)"]
    for row in rows:
        missed = ", ".join(f"{label} {count}" for label, count in row["predicted_as"].items())
        lines.append(
            f"{row['label']:<14}{row['images']:>7d}{row['recall']:>8.2f}  {row['origin']}"
            + (f" ({missed})" if missed else "")
        )
    return "\n".join(lines)


def format_report(metrics: dict) -> str:
    """Plain-text report, illustration recall on the first line."""
    per_class = metrics["per_class"]
    lines = []
    if "illustration" in per_class:
        lines.append(f"illustration recall: {per_class['illustration']['recall']:.3f}")
    lines.append(f"accuracy: {metrics['accuracy']:.3f}   macro-F1: {metrics['macro_f1']:.3f}")
    lines.append(f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for label, scores in per_class.items():
        lines.append(
            f"{label:<14}{scores['precision']:>10.3f}{scores['recall']:>10.3f}"
            f"{scores['f1']:>10.3f}{scores['support']:>9d}"
        )
    width = max(len(label) for label in metrics["labels"]) + 2
    lines.append("confusion (rows = true, columns = predicted):")
    lines.append(" " * width + "".join(f"{label:>{width}}" for label in metrics["labels"]))
    for label, row in zip(metrics["labels"], metrics["confusion"]):
        lines.append(f"{label:<{width}}" + "".join(f"{count:>{width}d}" for count in row))
    return "\n".join(lines)


def format_comparison(metrics: dict, other: dict | None, name: str = "candidate", other_name: str = "active") -> str:
    """Two models on the same images: one row per metric (illustration recall first), each model's value and
    the change, then the first model's confusion matrix. Every metric appears once."""
    labels = metrics["labels"]
    rows = [("illustration recall", ("per_class", "illustration", "recall"))] if "illustration" in labels else []
    rows += [("macro-F1", ("macro_f1",)), ("accuracy", ("accuracy",))]
    for label in labels:
        for score in ("precision", "recall", "f1"):
            if (label, score) != ("illustration", "recall"):
                rows.append((f"{label} {score.replace('f1', 'F1')}", ("per_class", label, score)))

    def value(source: dict, path: tuple[str, ...]) -> float:
        for key in path:
            source = source[key]
        return float(source)

    width = max(len(title) for title, _ in rows) + 2
    columns = [name[:22], *([other_name[:22], "change"] if other is not None else [])]
    lines = [" " * width + "".join(f"{column:>24}" for column in columns)]
    for title, path in rows:
        line = f"{title:<{width}}{value(metrics, path):>24.3f}"
        if other is not None:
            line += f"{value(other, path):>24.3f}{value(metrics, path) - value(other, path):>+24.3f}"
        lines.append(line)
    cell = max(len(label) for label in labels) + 2
    lines.append(f"confusion of {name} (rows = true, columns = predicted):")
    lines.append(" " * cell + "".join(f"{label:>{cell}}" for label in labels))
    for label, counts in zip(labels, metrics["confusion"]):
        lines.append(f"{label:<{cell}}" + "".join(f"{count:>{cell}d}" for count in counts))
    return "\n".join(lines)


def save_confusion_png(metrics: dict, path: str | Path, title: str = "confusion matrix") -> Path:
    """Draw the confusion matrix (counts in the cells) with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels, confusion = metrics["labels"], metrics["confusion"]
    figure, axes = pyplot.subplots(figsize=(1.6 * len(labels) + 2, 1.4 * len(labels) + 1.5))
    image = axes.imshow(confusion, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels=labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    brightest = max(max(row) for row in confusion) or 1
    for row_index, row in enumerate(confusion):
        for column_index, count in enumerate(row):
            colour = "white" if count > brightest / 2 else "black"
            axes.text(column_index, row_index, str(count), ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)
    return path


class ScoredImage(NamedTuple):
    item: Any  # the LabelledImage
    predicted: str | None  # None: the image could not be decoded
    probabilities: list[float] | None


def evaluate_model(
    model, items, *, runner=None, batch_size: int = 16, max_frames: int = 4
) -> tuple[dict, list[ScoredImage]]:
    """Classify labelled `items` and score them; returns (metrics, one ScoredImage per item, in order).

    Undecodable images are left out of the metrics and reported as `skipped`. `feed` holds the feed figures
    under the model's own review policy (`classifier.policy.feed_figures`), or None for a model without one.
    """
    from classifier.inference import FeatureRunner, run_classifier

    runner = runner or FeatureRunner(model)
    by_key = {item.key: item for item in items}
    probabilities = {}
    for result in run_classifier(
        model, [(item.key, item.source) for item in items], runner=runner, batch_size=batch_size, max_frames=max_frames
    ):
        if result.error is None:
            probabilities[result.key] = result.probabilities
    predictions = {
        key: model.labels[max(range(len(model.labels)), key=lambda i: probs[i])] for key, probs in probabilities.items()
    }
    scored = [key for key in by_key if key in predictions]
    metrics = compute_metrics([by_key[k].label for k in scored], [predictions[k] for k in scored], model.labels)
    metrics["feed"] = None
    if model.policy is not None and scored:
        from classifier.policy import feed_figures

        metrics["feed"] = feed_figures(
            [by_key[k].label for k in scored], [probabilities[k] for k in scored], model.labels, model.policy
        )
    metrics["skipped"] = len(items) - len(scored)
    return metrics, [ScoredImage(by_key[key], predictions.get(key), probabilities.get(key)) for key in by_key]
