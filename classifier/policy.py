"""The review policy: which calls feed automatically, which go to review, which are set aside; fitted to feed targets.

A user sees two things: the automatic feed (should hold almost only illustrations) and the review queue
(should stay short). An image is decided on its calibrated P(illustration) alone, by two thresholds:

- `feed_threshold` and above: an illustration, into the feed without review;
- `floor` up to `feed_threshold`: not confidently an illustration, but possibly one: to review;
- below `floor`: confidently not an illustration, decided as the likelier of the other classes.

Screenshot-vs-photo doubt costs the feed nothing, so it spends no review. The thresholds are fitted on
out-of-fold predictions (images scored by models that never saw their origin) against three targets:
feed precision, the share of illustrations silently lost (decided as something else), and the review
budget. numpy only: the decision runs per image at classify time and the fit runs wherever a model is trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

ILLUSTRATION = "illustration"
# Candidate thresholds for fitting: at most this many quantiles of P(illustration), plus the extremes.
MAX_CANDIDATES = 1000


class PolicyError(ValueError):
    """A policy cannot be fitted (no illustrations to fit on) or a stored policy is malformed."""


@dataclass(frozen=True)
class PolicyTargets:
    """What the fit aims for; `[classifier]` config keys of the same names."""

    feed_precision_target: float = 0.98  # share of illustrations among automatically fed images
    review_budget: float = 0.10  # share of all images sent to review, at most
    max_illustrations_lost: float = 0.01  # share of illustrations decided as something else, at most

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise PolicyError(f"{name} must be a fraction between 0 and 1, got {value}")


@dataclass(frozen=True)
class ReviewPolicy:
    feed_threshold: float
    floor: float
    targets: PolicyTargets = PolicyTargets()

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor <= self.feed_threshold <= 1.0 + 1e-9:
            raise PolicyError(
                f"policy thresholds must satisfy 0 <= floor <= feed_threshold <= 1, "
                f"got floor {self.floor}, feed_threshold {self.feed_threshold}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"feed_threshold": self.feed_threshold, "floor": self.floor, "targets": asdict(self.targets)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReviewPolicy":
        try:
            return cls(float(data["feed_threshold"]), float(data["floor"]), PolicyTargets(**data.get("targets", {})))
        except (KeyError, TypeError, ValueError) as error:
            raise PolicyError(f"malformed review policy {data!r}: {error}") from None


@dataclass(frozen=True)
class PolicyDecision:
    label: str
    review: bool
    reason: str | None


def decide(probabilities: Sequence[float], labels: Sequence[str], policy: ReviewPolicy) -> PolicyDecision:
    """One image: feed as illustration, review (label = the likeliest class), or set aside as another class."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    index = list(labels).index(ILLUSTRATION)
    p_illustration = float(probabilities[index])
    if p_illustration >= policy.feed_threshold:
        return PolicyDecision(ILLUSTRATION, False, None)
    others = [i for i in range(len(labels)) if i != index]
    best_other = labels[max(others, key=lambda i: probabilities[i])]
    if p_illustration >= policy.floor:
        likeliest = labels[int(np.argmax(probabilities))]
        return PolicyDecision(
            likeliest,
            True,
            f"P(illustration) {p_illustration:.3f} between the floor "
            f"{policy.floor:.3f} and the feed threshold {policy.feed_threshold:.3f}",
        )
    return PolicyDecision(best_other, False, None)


def _outcomes(p_illustration: np.ndarray, is_illustration: np.ndarray, feed: np.ndarray, floor: np.ndarray):
    """For threshold arrays (broadcast): (fed, fed illustrations, reviewed, lost illustrations) counts."""
    order = np.sort(p_illustration)
    order_ill = np.sort(p_illustration[is_illustration])
    total, illustrations = len(order), len(order_ill)

    def at_or_above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        return len(sorted_values) - np.searchsorted(sorted_values, thresholds, side="left")

    fed = at_or_above(order, feed)
    fed_ill = at_or_above(order_ill, feed)
    reviewed = at_or_above(order, floor) - fed
    lost = illustrations - at_or_above(order_ill, floor)
    return fed, fed_ill, reviewed, lost, total, illustrations


def fit_policy(
    probabilities: np.ndarray,
    true_labels: Sequence[str],
    labels: Sequence[str],
    targets: PolicyTargets = PolicyTargets(),
) -> ReviewPolicy:
    """Thresholds from out-of-fold probabilities [N, classes] and true labels.

    Within the review budget, pick the (floor, feed threshold) pair whose larger shortfall against the feed
    precision and illustrations-lost targets is smallest, each shortfall measured in units of what its
    target allows (1 - precision target; max lost share), so neither is sacrificed to the other; ties go to
    the smaller sum of shortfalls, then less review, then a higher floor. When both targets fit in the budget
    this is the cheapest pair that meets both.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != len(true_labels):
        raise PolicyError(f"probabilities of shape {probabilities.shape} for {len(true_labels)} labels")
    index = list(labels).index(ILLUSTRATION)
    p_illustration = probabilities[:, index]
    is_illustration = np.array([label == ILLUSTRATION for label in true_labels])
    if not is_illustration.any() or is_illustration.all():
        raise PolicyError("fitting a review policy needs illustrations and other images among the predictions")
    quantiles = np.quantile(p_illustration, np.linspace(0.0, 1.0, MAX_CANDIDATES))
    candidates = np.unique(
        np.concatenate(
            [
                [0.0, np.nextafter(1.0, 2.0)],
                quantiles,
                p_illustration[is_illustration] if is_illustration.sum() <= MAX_CANDIDATES else [],
            ]
        )
    )
    floor, feed = np.meshgrid(candidates, candidates, indexing="ij")
    usable = floor <= feed
    fed, fed_ill, reviewed, lost, total, illustrations = _outcomes(p_illustration, is_illustration, feed, floor)
    precision = np.where(fed > 0, fed_ill / np.maximum(fed, 1), 1.0)
    precision_gap = np.maximum(0.0, targets.feed_precision_target - precision) / max(
        1e-6, 1 - targets.feed_precision_target
    )
    lost_gap = np.maximum(0.0, lost / illustrations - targets.max_illustrations_lost) / max(
        1e-6, targets.max_illustrations_lost
    )
    review_rate = reviewed / total
    # Feeding nothing meets the precision target trivially; every illustration then waits in review or is
    # lost, which the lost target and the budget already price.
    allowed = usable & (review_rate <= targets.review_budget + 1e-12)
    worst = np.where(allowed, np.maximum(precision_gap, lost_gap), np.inf)
    total = precision_gap + lost_gap
    if not np.isfinite(worst).any():  # floor == feed threshold (no review) always fits; be safe
        raise PolicyError("no threshold pair fits the review budget")
    key = np.lexsort((-floor.ravel(), review_rate.ravel(), np.round(total.ravel(), 9), np.round(worst.ravel(), 9)))
    best = key[0]
    # A threshold just above 1 is "feed nothing" / "review nothing below 1"; it is stored as such.
    return ReviewPolicy(float(feed.ravel()[best]), float(floor.ravel()[best]), targets)


def feed_figures(
    true_labels: Sequence[str], probabilities: np.ndarray, labels: Sequence[str], policy: ReviewPolicy
) -> dict[str, Any]:
    """What a user would see under `policy`: `review_rate` and `feed_precision` (fractions; precision is None
    when nothing is fed), `illustrations_lost` (illustrations decided as another class without review),
    `illustrations_in_feed` (illustrations fed automatically), `illustrations` (all of them)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(true_labels) != len(probabilities):
        raise PolicyError(f"{len(true_labels)} true labels but {len(probabilities)} predictions")
    return figures_of_decisions(true_labels, [decide(row, labels, policy) for row in probabilities])


def figures_of_decisions(true_labels: Sequence[str], decisions: Sequence[PolicyDecision]) -> dict[str, Any]:
    """`feed_figures` for decisions already made (e.g. each fold by its own policy)."""
    fed = [
        truth
        for truth, decision in zip(true_labels, decisions, strict=True)
        if not decision.review and decision.label == ILLUSTRATION
    ]
    lost = sum(
        1
        for truth, decision in zip(true_labels, decisions)
        if truth == ILLUSTRATION and not decision.review and decision.label != ILLUSTRATION
    )
    reviewed = sum(decision.review for decision in decisions)
    in_feed = sum(truth == ILLUSTRATION for truth in fed)
    return {
        "review_rate": reviewed / len(decisions) if decisions else 0.0,
        "feed_precision": in_feed / len(fed) if fed else None,
        "illustrations_lost": lost,
        "illustrations_in_feed": in_feed,
        "illustrations": sum(truth == ILLUSTRATION for truth in true_labels),
    }


def format_feed_figures(figures: dict[str, Any]) -> str:
    """One line for reports: what the feed and the review queue would look like."""
    precision = "n/a" if figures["feed_precision"] is None else f"{figures['feed_precision']:.3f}"
    illustrations = figures["illustrations"]
    lost_share = figures["illustrations_lost"] / illustrations if illustrations else 0.0
    return (
        f"feed: precision {precision}, {figures['illustrations_in_feed']} of {illustrations} illustrations fed, "
        f"{figures['illustrations_lost']} lost ({lost_share:.1%}), review rate {figures['review_rate']:.1%}"
    )
