"""Fitting the product's linear head (classifier.model.LinearHead) with origin-aware sample weights.

The product's nightly `train_head` balances classes on a user's labels; the default model is trained on a
corpus where two sources supply half the images, so here each origin's images also share their weight,
the loss is full-batch L-BFGS with an L2 penalty (deterministic, seconds per fold).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from classifier.model import LinearHead


@dataclass(frozen=True)
class HeadSettings:
    l2: float = 1e-2
    # "none": every image counts once; "class": classes weigh equally; "class_origin": additionally each
    # origin's images share weight ~ sqrt(count), so one game's 179 portraits do not define "illustration".
    weighting: str = "class_origin"
    # Extra weight on illustration images: a missed illustration costs more than a screenshot let through.
    illustration_boost: float = 1.0
    iterations: int = 200
    # The last `tail_columns` inputs (pixel statistics: a handful of columns after thousands of conv ones)
    # get their own L2 factor, so the penalty tuned for the conv columns does not silence them.
    tail_columns: int = 0
    tail_l2: float = 1e-2


def sample_weights(labels: torch.Tensor, origins: list[str], settings: HeadSettings, classes: int) -> torch.Tensor:
    weights = torch.ones(len(labels))
    if settings.weighting == "class_origin":
        origin_counts = Counter(origins)
        weights = torch.tensor([origin_counts[origin] ** -0.5 for origin in origins])
    elif settings.weighting not in ("none", "class"):
        raise ValueError(f"unknown weighting {settings.weighting!r}")
    if settings.weighting != "none":
        for label in range(classes):
            members = labels == label
            if members.any():
                weights[members] /= weights[members].sum()
    weights[labels == 0] *= settings.illustration_boost
    return weights / weights.mean()


def fit_head(
    vectors: torch.Tensor, labels: torch.Tensor, origins: list[str], settings: HeadSettings, classes: int = 3
) -> LinearHead:
    vectors = vectors.float()
    head = LinearHead(vectors.shape[1], classes)
    head.set_standardisation(vectors)
    weights = sample_weights(labels, origins, settings, classes)
    optimizer = torch.optim.LBFGS(head.linear.parameters(), max_iter=settings.iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        losses = F.cross_entropy(head(vectors), labels, reduction="none")
        squares = head.linear.weight.pow(2)
        split = squares.shape[1] - settings.tail_columns
        penalty = settings.l2 * squares[:, :split].sum() + settings.tail_l2 * squares[:, split:].sum()
        loss = (losses * weights).mean() + penalty
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.eval()
