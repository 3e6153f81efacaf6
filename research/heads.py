"""A linear softmax head on cached feature vectors: standardised inputs, weighted samples, L2 penalty.

Research version used for the experiment grid; `fit_head` returns a plain `nn.Module` so the shipped
model can hold it as a state dict.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class LinearHead(nn.Module):
    """(x - mean) / scale -> linear -> logits; buffer names match classifier.model.LinearHead's state dict."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_scale", torch.ones(dim))
        self.linear = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.feature_mean) / self.feature_scale)


@dataclass(frozen=True)
class HeadSettings:
    l2: float = 1e-2
    # "none": every image counts once; "class": classes weigh equally; "class_origin": additionally each
    # origin's images share weight ~ sqrt(count), so one game's 179 portraits do not define "illustration".
    weighting: str = "class_origin"
    # Extra weight on illustration images: a missed illustration costs more than a screenshot let through.
    illustration_boost: float = 1.0
    iterations: int = 200


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
    head.feature_mean.copy_(vectors.mean(dim=0))
    head.feature_scale.copy_(vectors.std(dim=0).clamp_min(1e-6))
    weights = sample_weights(labels, origins, settings, classes)
    optimizer = torch.optim.LBFGS(head.linear.parameters(), max_iter=settings.iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        losses = F.cross_entropy(head(vectors), labels, reduction="none")
        loss = (losses * weights).mean() + settings.l2 * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.eval()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The softmax temperature minimising NLL of held-out logits (grid then refine; 1-D, so no optimiser)."""
    candidates = torch.exp(torch.linspace(-3, 3, 241))
    losses = torch.stack([F.cross_entropy(logits / t, labels) for t in candidates])
    return float(candidates[int(losses.argmin())])
