"""Grad-CAM and Guided Grad-CAM: localisation on a trained model, the randomisation sanity check, hygiene."""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest
import torch
from torch import nn

from classifier import build_vgg16
from explain import ExplainError, grad_cam, guided_grad_cam
from tests.test_explain_support import one_torch_thread  # noqa: F401  (autouse fixture)

IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_CLASSES = 3
# Patch colours decide the class; the background is grey noise, so colour is only found in the patch.
PATCH_COLOURS = torch.tensor([[1.5, -1.5, -1.5], [-1.5, 1.5, -1.5], [-1.5, -1.5, 1.5]])


def patch_images(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with one coloured patch at a random position: (images, labels, patch top-left corners)."""
    grey = torch.randn(count, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 0.6
    images = grey.expand(count, 3, IMAGE_SIZE, IMAGE_SIZE).clone()
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    corners = torch.randint(0, IMAGE_SIZE - PATCH_SIZE + 1, (count, 2), generator=generator)
    for index in range(count):
        row, col = corners[index].tolist()
        noise = torch.randn(3, PATCH_SIZE, PATCH_SIZE, generator=generator) * 0.2
        images[index, :, row : row + PATCH_SIZE, col : col + PATCH_SIZE] = (
            PATCH_COLOURS[labels[index]][:, None, None] + noise
        )
    return images, labels, corners


class SmallCnn(nn.Module):
    """A VGG-like trunk (in-place ReLUs, as in VGG16) with global pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def trained() -> tuple[SmallCnn, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A SmallCnn trained on patch images (held-out accuracy checked), and 100 held-out images."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    images, labels, _corners = patch_images(1000, generator)
    model = SmallCnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _epoch in range(3):
        for start in range(0, len(images), 50):
            loss = nn.functional.cross_entropy(model(images[start : start + 50]), labels[start : start + 50])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    held_out, held_out_labels, held_out_corners = patch_images(100, generator)
    with torch.no_grad():
        accuracy = (model(held_out).argmax(1) == held_out_labels).float().mean().item()
    assert accuracy >= 0.95, f"the test model did not learn the patch task (accuracy {accuracy:.2f})"
    return model, held_out, held_out_labels, held_out_corners


def layer_of(model: SmallCnn) -> nn.Module:
    return model.features[7]


def test_grad_cam_maximum_falls_inside_the_patch(trained):
    model, images, _labels, corners = trained
    hits = 0
    for image, (row, col) in zip(images, corners.tolist()):
        heatmap = grad_cam(model, image[None], layer=layer_of(model))
        assert heatmap.shape == (IMAGE_SIZE, IMAGE_SIZE) and heatmap.dtype == np.float32
        assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
        peak_row, peak_col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        hits += row <= peak_row < row + PATCH_SIZE and col <= peak_col < col + PATCH_SIZE
    assert hits / len(images) >= 0.9, f"pointing game: {hits}/{len(images)} maxima inside the patch"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties (CAMs have many exact zeros)."""

    def average_ranks(values: np.ndarray) -> np.ndarray:
        _unique, inverse, counts = np.unique(values.ravel(), return_inverse=True, return_counts=True)
        first_rank = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return (first_rank + (counts - 1) / 2.0)[inverse]

    ranks_a, ranks_b = average_ranks(a), average_ranks(b)
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return 0.0
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def randomised(model: SmallCnn) -> SmallCnn:
    """Cascading randomisation of every layer (Adebayo et al., 2018): same architecture, fresh weights."""
    scrambled = copy.deepcopy(model)
    torch.manual_seed(123)
    for module in scrambled.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()
    return scrambled


def mean_rank_correlation_after_randomisation(method, trained) -> float:
    model, images, labels, _corners = trained
    scrambled = randomised(model)
    correlations = []
    for image, label in zip(images[:40], labels[:40].tolist()):
        before = method(model, image[None], target=label, layer=layer_of(model))
        after = method(scrambled, image[None], target=label, layer=layer_of(scrambled))
        correlations.append(spearman(before, after))
    return float(np.mean(correlations))


def test_grad_cam_changes_when_weights_are_randomised(trained):
    correlation = mean_rank_correlation_after_randomisation(grad_cam, trained)
    print(f"\nsanity check: Grad-CAM Spearman(trained, randomised) = {correlation:.3f}")
    assert correlation < 0.5


def test_guided_grad_cam_changes_when_weights_are_randomised(trained):
    correlation = mean_rank_correlation_after_randomisation(guided_grad_cam, trained)
    print(f"\nsanity check: Guided Grad-CAM Spearman(trained, randomised) = {correlation:.3f}")
    assert correlation < 0.5


def test_guided_grad_cam_concentrates_more_of_its_mass_on_the_patch_than_grad_cam(trained):
    model, images, _labels, corners = trained
    sharper = 0
    for image, (row, col) in zip(images[:40], corners[:40].tolist()):
        patch = (slice(row, row + PATCH_SIZE), slice(col, col + PATCH_SIZE))
        guided = guided_grad_cam(model, image[None], layer=layer_of(model))
        coarse = grad_cam(model, image[None], layer=layer_of(model))
        assert guided.shape == (IMAGE_SIZE, IMAGE_SIZE) and guided.dtype == np.float32
        sharper += guided[patch].sum() / guided.sum() > coarse[patch].sum() / coarse.sum()
    assert sharper / 40 >= 0.9, f"Guided Grad-CAM sharper than Grad-CAM on only {sharper}/40 images"


def test_target_none_explains_the_predicted_class(trained):
    model, images, _labels, _corners = trained
    image = images[:1]
    predicted = int(model(image).argmax())
    assert np.array_equal(grad_cam(model, image, layer=layer_of(model)),
                          grad_cam(model, image, target=predicted, layer=layer_of(model)))  # fmt: skip


def test_a_class_without_positive_evidence_gives_an_all_zero_map():
    model = SmallCnn()
    with torch.no_grad():
        model.head.weight.fill_(-1.0)  # every channel counts against class 0: no positive evidence
    heatmap = grad_cam(model, torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), target=0, layer=layer_of(model))
    assert heatmap.dtype == np.float32 and not heatmap.any()


def live_tensor_count() -> int:
    gc.collect()
    return sum(1 for thing in gc.get_objects() if issubclass(type(thing), torch.Tensor))


def test_repeated_calls_leave_no_hooks_grads_or_tensors_behind():
    torch.manual_seed(0)
    model = build_vgg16(num_classes=3, width=1 / 32)
    model.train()
    image = torch.randn(1, 3, 64, 64)
    for _ in range(5):
        grad_cam(model, image)
        guided_grad_cam(model, image)
    tensors_before = live_tensor_count()
    for _ in range(50):
        grad_cam(model, image)
        guided_grad_cam(model, image)
    assert live_tensor_count() <= tensors_before
    for name, module in model.named_modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
        assert not any(hooks), f"hook left on {name or 'model'}"
    assert all(parameter.grad is None for parameter in model.parameters())
    assert model.training, "the caller's train/eval mode must be restored"


def test_default_layer_is_vgg16_features_29_and_works_under_inference_mode():
    torch.manual_seed(0)
    model = build_vgg16(num_classes=3, width=1 / 32)
    image = torch.randn(1, 3, 64, 64)
    seen = []
    handle = model.features[29].register_forward_hook(lambda _m, _i, output: seen.append(output.shape))
    try:
        with torch.inference_mode():
            heatmap = grad_cam(model, image)
    finally:
        handle.remove()
    assert heatmap.shape == (64, 64) and heatmap.max() == pytest.approx(1.0)
    assert seen == [torch.Size([1, 16, 4, 4])]


def test_bad_inputs_are_rejected_with_the_offending_value():
    model = build_vgg16(num_classes=3, width=1 / 32)
    with pytest.raises(ExplainError, match=r"\[1, 3, H, W\].*\(3, 64, 64\)"):
        grad_cam(model, torch.randn(3, 64, 64))
    with pytest.raises(ExplainError, match="target class 7"):
        grad_cam(model, torch.randn(1, 3, 64, 64), target=7)
    with pytest.raises(ExplainError, match="features.29"):
        grad_cam(SmallCnn(), torch.randn(1, 3, 32, 32))
