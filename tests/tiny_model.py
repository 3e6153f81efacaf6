"""The reduced-width product classifier the CLI, chat, check and video tests register: cheap to run, real in shape."""

from __future__ import annotations

import torch

from classifier.features import FeatureSpec
from classifier.model import SCRATCH_BACKBONE, ImageClassifier, new_classifier
from classifier.vgg import make_features

WIDTH = 1 / 32


def tiny_classifier(version: str, seed: int = 0) -> ImageClassifier:
    """A 1/32-width VGG16 trunk (random, seeded; shipped whole as the backbone delta, so the model file loads
    without ImageNet weights), the multi-view feature recipe and an untrained head."""
    torch.manual_seed(seed)
    trunk = make_features(width=WIDTH)
    model = new_classifier(trunk, FeatureSpec(framing="multi_view"), backbone=SCRATCH_BACKBONE, backbone_width=WIDTH)
    model.version = version
    model.backbone_delta = {f"features.{name}": tensor for name, tensor in trunk.state_dict().items()}
    return model
