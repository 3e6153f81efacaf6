"""Fitting the product's linear head (classifier.model.LinearHead) with origin-aware sample weights.

The product's nightly `train_head` balances classes on a user's labels; the default model is trained on a
corpus where two sources supply half the images, so here each origin's images also share their weight,
the loss is full-batch L-BFGS with an L2 penalty (deterministic, seconds per fold). The fitting itself is
the product's (`classifier.train.fit_linear_head`): nightly retrains use the shipped model's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from classifier.model import LinearHead
from classifier.train import fit_linear_head, origin_weights


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
    return origin_weights(labels, origins, settings.weighting, settings.illustration_boost, classes)


def fit_head(
    vectors: torch.Tensor, labels: torch.Tensor, origins: list[str], settings: HeadSettings, classes: int = 3
) -> LinearHead:
    return fit_linear_head(
        vectors,
        labels,
        sample_weights(labels, origins, settings, classes),
        l2=settings.l2,
        tail_columns=settings.tail_columns,
        tail_l2=settings.tail_l2,
        iterations=settings.iterations,
        classes=classes,
    )
