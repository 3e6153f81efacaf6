"""The review policy: per-image decisions, feed figures counted by hand, and fits that meet their targets."""

import numpy as np
import pytest

from classifier import LABELS
from classifier.policy import (
    PolicyError,
    PolicyTargets,
    ReviewPolicy,
    decide,
    feed_figures,
    fit_policy,
)


def probs(p_illustration: float, screenshot_share: float = 0.5) -> list[float]:
    rest = 1.0 - p_illustration
    return [p_illustration, rest * screenshot_share, rest * (1 - screenshot_share)]


def test_decide_feeds_reviews_or_sets_aside_by_illustration_probability():
    policy = ReviewPolicy(feed_threshold=0.8, floor=0.05)
    assert decide(probs(0.9), LABELS, policy) == decide(probs(0.8), LABELS, policy)
    assert decide(probs(0.9), LABELS, policy).label == "illustration" and not decide(probs(0.9), LABELS, policy).review
    middle = decide(probs(0.3, screenshot_share=0.8), LABELS, policy)
    assert middle.review and middle.label == "screenshot" and "floor 0.050" in middle.reason
    # A screenshot/photo near tie below the floor costs the feed nothing: decided, not reviewed.
    low = decide(probs(0.01, screenshot_share=0.49), LABELS, policy)
    assert low == decide([0.01, 0.49 * 0.99, 0.51 * 0.99], LABELS, policy)
    assert low.label == "photo" and not low.review


def test_feed_figures_match_a_hand_count():
    policy = ReviewPolicy(feed_threshold=0.7, floor=0.2)
    rows = [  # (truth, P(illustration))
        ("illustration", 0.95),
        ("illustration", 0.75),
        ("illustration", 0.5),
        ("illustration", 0.1),
        ("screenshot", 0.8),
        ("screenshot", 0.3),
        ("photo", 0.05),
        ("photo", 0.02),
    ]
    figures = feed_figures([t for t, _ in rows], np.array([probs(p) for _, p in rows]), LABELS, policy)
    # fed: 0.95, 0.75 (illustrations), 0.8 (screenshot); reviewed: 0.5, 0.3; lost: the illustration at 0.1.
    assert figures == {
        "review_rate": 2 / 8,
        "feed_precision": 2 / 3,
        "illustrations_lost": 1,
        "illustrations_in_feed": 2,
        "illustrations": 4,
    }


def simulated(seed: int, n: int = 3000):
    """Out-of-fold-like predictions: illustrations mostly high P(illustration), a tail of hard ones."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(LABELS, size=n, p=[0.4, 0.3, 0.3])
    p = np.where(truth == "illustration", rng.beta(3.5, 1.0, n), rng.beta(1.0, 7, n))
    return list(truth), np.stack([p, (1 - p) / 2, (1 - p) / 2], axis=1)


def test_fit_meets_reachable_targets_with_the_least_review_and_holds_on_fresh_data():
    truth, probabilities = simulated(0)
    targets = PolicyTargets(feed_precision_target=0.98, review_budget=0.2, max_illustrations_lost=0.01)
    policy = fit_policy(probabilities, truth, LABELS, targets)
    figures = feed_figures(truth, probabilities, LABELS, policy)
    assert figures["feed_precision"] >= 0.98
    assert figures["illustrations_lost"] <= 0.01 * figures["illustrations"]
    assert figures["review_rate"] <= 0.2
    assert figures["review_rate"] > 0.02  # the targets are not met for free on these predictions
    # Least review (to the fit's grid of ~3 images): shrinking the review band by 5 images on either side
    # breaks a target.
    p = probabilities[:, 0]
    band = np.sort(p[(p >= policy.floor) & (p < policy.feed_threshold)])
    lower_feed = feed_figures(truth, probabilities, LABELS, ReviewPolicy(band[-5], policy.floor, targets))
    assert lower_feed["feed_precision"] < 0.98
    higher_floor = feed_figures(truth, probabilities, LABELS, ReviewPolicy(policy.feed_threshold, band[5], targets))
    assert higher_floor["illustrations_lost"] > 0.01 * higher_floor["illustrations"]
    # Same generator, new draw: the fitted thresholds stay close to their targets.
    fresh_truth, fresh = simulated(1)
    fresh_figures = feed_figures(fresh_truth, fresh, LABELS, policy)
    assert fresh_figures["feed_precision"] >= 0.97
    assert fresh_figures["illustrations_lost"] <= 0.02 * fresh_figures["illustrations"]


def test_a_small_budget_is_never_exceeded_and_the_shortfall_is_shared():
    truth, probabilities = simulated(2)
    policy = fit_policy(probabilities, truth, LABELS, PolicyTargets(0.99, 0.02, 0.005))
    figures = feed_figures(truth, probabilities, LABELS, policy)
    assert figures["review_rate"] <= 0.02
    assert figures["feed_precision"] is not None and figures["illustrations_in_feed"] > 0


def test_fitting_without_illustrations_or_with_bad_targets_is_a_clear_error():
    with pytest.raises(PolicyError, match="needs illustrations and other images"):
        fit_policy(np.array([probs(0.1), probs(0.2)]), ["photo", "screenshot"], LABELS)
    with pytest.raises(PolicyError, match="review_budget must be a fraction"):
        PolicyTargets(review_budget=1.5)
    with pytest.raises(PolicyError, match="malformed review policy"):
        ReviewPolicy.from_dict({"floor": 0.1})


def test_policy_round_trips_through_its_dict():
    policy = ReviewPolicy(0.81, 0.04, PolicyTargets(0.97, 0.08, 0.02))
    assert ReviewPolicy.from_dict(policy.to_dict()) == policy


def test_model_file_carries_the_policy_and_refuses_a_malformed_one(tmp_path):
    import torch

    from classifier.model import ModelFileError, load_model, save_model
    from tests.synthetic import tiny_base_model

    model = tiny_base_model()
    model.policy = ReviewPolicy(0.7, 0.05, PolicyTargets(0.97, 0.1, 0.02))
    path = save_model(model, tmp_path / "m.pt")
    assert load_model(path, trunk_weights=None).policy == model.policy
    payload = torch.load(path, weights_only=True)
    payload["policy"] = {"feed_threshold": 0.2, "floor": 0.6}
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="invalid review policy.*floor <= feed_threshold"):
        load_model(path, trunk_weights=None)
