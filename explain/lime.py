"""LIME for images (Ribeiro et al., 2016): switch superpixels off at random, fit a local weighted linear model.

Follows the reference `lime_image` explainer: superpixels hidden by filling them with their mean colour,
the first sample keeps everything, samples weighted by an exponential kernel (width 0.25) on the cosine
distance to the full image, a ridge fit (alpha 1) of the target class probability on the on/off vector.
The sampling and the fit are a dozen lines of numpy, so no LIME library is pulled in for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explain.base import ExplainError, check_image_batch, evaluating, resolve_target, unnormalised_rgb
from explain.superpixels import slic

KERNEL_WIDTH = 0.25
RIDGE_ALPHA = 1.0


@dataclass(frozen=True)
class LimeExplanation:
    """Per-superpixel effect on the target class probability, as fitted around the image."""

    segments: np.ndarray  # int32 [H, W]: superpixel id of each pixel
    weights: np.ndarray  # float64 [S]: change in the target probability when superpixel s is shown
    intercept: float
    fit_r2: float  # weighted R^2 of the local linear model: how much to trust the weights
    target: int

    def segment_signs(self, num_features: int = 5, min_weight: float = 0.0) -> np.ndarray:
        """int8 [S]: +1 for the top superpixels (by |weight|) that support the target, -1 against, 0 rest.

        The reference explainer's `get_image_and_mask(positive_only=False, num_features=5)`.
        """
        order = np.argsort(-np.abs(self.weights), kind="stable")[:num_features]
        signs = np.zeros(len(self.weights), dtype=np.int8)
        for segment in order:
            if abs(self.weights[segment]) > min_weight:
                signs[segment] = 1 if self.weights[segment] > 0 else -1
        return signs

    def regions(self, num_features: int = 5, min_weight: float = 0.0) -> np.ndarray:
        """int8 [H, W]: `segment_signs` painted onto the pixels."""
        return self.segment_signs(num_features, min_weight)[self.segments]


def weighted_ridge(
    features: np.ndarray, targets: np.ndarray, sample_weights: np.ndarray, alpha: float = RIDGE_ALPHA
) -> tuple[np.ndarray, float, float]:
    """Ridge regression with an unpenalised intercept: (coefficients, intercept, weighted R^2)."""
    total = sample_weights.sum()
    feature_mean = sample_weights @ features / total
    target_mean = float(sample_weights @ targets / total)
    centred = features - feature_mean
    weighted = centred * sample_weights[:, None]
    gram = centred.T @ weighted + alpha * np.eye(features.shape[1])
    coefficients = np.linalg.solve(gram, weighted.T @ (targets - target_mean))
    intercept = target_mean - float(feature_mean @ coefficients)
    residual = targets - (features @ coefficients + intercept)
    spread = float(sample_weights @ (targets - target_mean) ** 2)
    r2 = 1.0 - float(sample_weights @ residual**2) / spread if spread > 0 else 0.0
    return coefficients, intercept, r2


def lime(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    n_segments: int = 50,
    batch_size: int = 16,
) -> LimeExplanation:
    """Explain `model`'s probability for class `target` (None: predicted) on `image` [1, 3, H, W]."""
    check_image_batch(image)
    if num_samples < 2:
        raise ExplainError(f"LIME needs at least 2 samples, got {num_samples}")
    segments = slic(unnormalised_rgb(image[0]), n_segments=n_segments)
    num_segments = int(segments.max()) + 1
    segment_index = torch.from_numpy(segments.astype(np.int64)).reshape(-1)
    channels = image[0].detach().float().reshape(image.shape[1], -1)
    sums = torch.zeros(image.shape[1], num_segments).index_add_(1, segment_index, channels)
    mean_colour = sums / torch.bincount(segment_index, minlength=num_segments).float()
    hidden = mean_colour[:, segment_index].reshape(image.shape[1:])

    rng = np.random.default_rng(seed)
    switched_on = rng.integers(0, 2, size=(num_samples, num_segments)).astype(np.float64)
    switched_on[0] = 1.0
    probabilities = np.empty(num_samples, dtype=np.float64)
    original = image[0].detach().float()
    with torch.inference_mode(), evaluating(model):
        chosen = None
        for start in range(0, num_samples, batch_size):
            on = torch.from_numpy(switched_on[start : start + batch_size]).float()
            pixel_on = on[:, segment_index].reshape(len(on), 1, *image.shape[2:])
            batch = pixel_on * original + (1.0 - pixel_on) * hidden
            batch_probabilities = torch.softmax(model(batch), dim=1)
            if chosen is None:  # the first sample is the untouched image
                chosen = resolve_target(batch_probabilities[0], target)
            probabilities[start : start + len(on)] = batch_probabilities[:, chosen].double().numpy()

    cosine_distance = 1.0 - switched_on.sum(axis=1) / (np.sqrt(switched_on.sum(axis=1)) * np.sqrt(num_segments) + 1e-12)
    kernel = np.sqrt(np.exp(-(cosine_distance**2) / KERNEL_WIDTH**2))
    weights, intercept, r2 = weighted_ridge(switched_on, probabilities, kernel)
    return LimeExplanation(segments=segments, weights=weights, intercept=intercept, fit_r2=r2, target=chosen)
