"""CIFAR VGG-16 with BatchNorm as in kuangliu/pytorch-cifar (``VGG('VGG16')``).

Keys: ``features.0`` (conv3x3, with bias), ``features.1`` (BN), ``features.2`` (ReLU),
..., ``classifier`` (``Linear(512, num_classes)``), the same indices as the reference.
Two shape-only changes, neither of which touches the state_dict: the max-pools use
``ceil_mode=True`` and the last layer of ``features`` is a global adaptive average pool
instead of ``AvgPool2d(1, 1)``. For 32x32 inputs both are exactly the reference; they let
28x28 inputs (28 -> 14 -> 7 -> 4 -> 2 -> 1) through too, where floor pooling would shrink
the map to 0x0 at the fifth pool.
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import register_arch

VGG16_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]


class VGG(nn.Module):
    """``features`` (conv3x3+BN+ReLU blocks and max-pools) followed by ``classifier``."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images ``(N, C, H, W)``."""
        return self.classifier(self.features(x).flatten(1))


@register_arch("vgg16_bn", (3, 32, 32), "CIFAR VGG-16 with BatchNorm (kuangliu/pytorch-cifar)")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """CIFAR VGG-16-BN: 13 conv3x3+BN+ReLU layers, 5 max-pools, ``Linear(512, num_classes)``."""
    return VGG(VGG16_CFG, num_classes, in_channels)


VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGGBN1d(nn.Module):
    """VGG ``features`` (conv3x3+BN+ReLU, max-pools, global pool), then a BatchNorm1d classifier:
    ``classifier.0`` Linear(C, hidden), ``classifier.1`` BatchNorm1d(hidden), ReLU,
    ``classifier.3`` Linear(hidden, num_classes)."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3, hidden: int = 512):
        super().__init__()
        self.features = VGG(cfg, num_classes, in_channels).features
        channels = [int(c) for c in cfg if c != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images ``(N, C, H, W)``."""
        return self.classifier(self.features(x).flatten(1))


def infer_vgg_width(state_dict) -> dict:
    """``{"width": C}`` from the first conv's output channels, when the checkpoint has it."""
    shape = getattr(state_dict.get("features.0.weight"), "shape", None)
    return {"width": int(shape[0])} if shape is not None and len(shape) == 4 else {}


@register_arch(
    "vgg11_bn1d", (3, 32, 32), "VGG-11-BN with a Linear-BatchNorm1d-ReLU-Linear classifier",
    infer_kwargs=infer_vgg_width,
)
def vgg11_bn1d(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> VGGBN1d:
    """VGG-11-BN (8 conv3x3+BN+ReLU, 5 max-pools) whose classifier is Linear-BN1d-ReLU-Linear.

    Channel counts are VGG-11's scaled by ``width / 64`` (64 -> 512 at the default); the
    classifier's hidden layer has ``8 * width`` features, each a BatchNorm1d neuron, so the
    methods' BatchNorm1d path (per-feature statistics, Linear->BN1d pairing for CLP) is
    exercised on a real network. ``width=16`` makes a ~0.6M-parameter model for 1x28x28 digits.
    """
    cfg = [c if c == "M" else int(c) * width // 64 for c in VGG11_CFG]
    return VGGBN1d(cfg, num_classes, in_channels, hidden=8 * width)
