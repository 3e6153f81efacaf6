"""VGG16 with torchvision's exact parameter names, so official checkpoints load unchanged.

torchvision cannot be used with the CPU torch build we pin, so the architecture is rebuilt here.
"""

from __future__ import annotations

import torch
from torch import nn

# torchvision's configuration "D": channel counts, "M" = 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
# Indices of the conv layers inside `features`, as in torchvision's state dict.
VGG16_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# The ReLU after conv5_3: the default Grad-CAM layer and the end of the conv trunk.
LAST_CONV_RELU_INDEX = 29


def make_features(width: float = 1.0) -> nn.Sequential:
    """The conv trunk (`features.*`), channels scaled by `width` (< 1 only for fast tests)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = max(1, round(int(item) * width))
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Same module tree as torchvision.models.VGG: features, avgpool, classifier."""

    def __init__(self, features: nn.Sequential, num_classes: int, hidden: int, dropout: float = 0.5):
        super().__init__()
        last_channels = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a model trained from scratch behaves the same.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def build_vgg16(num_classes: int = 3, width: float = 1.0) -> VGG:
    """torchvision-compatible VGG16; at width 1.0 its state dict matches `torchvision.models.vgg16`."""
    if not 0 < width <= 1.0:
        raise ValueError(f"width must be in (0, 1], got {width}")
    hidden = max(8, round(4096 * width))
    return VGG(make_features(width), num_classes=num_classes, hidden=hidden)


def load_torchvision_state(model: VGG, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a torchvision-layout VGG16 state dict, skipping tensors whose shape differs (the 1000-class
    `classifier.6.*` for our 3 classes). Returns the names it skipped; any other mismatch is an error."""
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f"checkpoint has tensors VGG16 does not: {unknown[:5]}")
    skipped = sorted(name for name, tensor in state.items() if tensor.shape != own[name].shape)
    if any(not name.startswith("classifier.6.") for name in skipped):
        shapes = {name: (tuple(state[name].shape), tuple(own[name].shape)) for name in skipped}
        raise ValueError(f"checkpoint shapes do not fit this VGG16 (checkpoint, model): {shapes}")
    model.load_state_dict({name: t for name, t in state.items() if name not in skipped}, strict=False)
    return skipped
