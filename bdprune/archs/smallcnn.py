"""A small BatchNorm CNN for 1x28x28 images, with a BatchNorm1d after its hidden Linear layer
(so that the BatchNorm1d code paths of the scoring methods have a model to run on)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import register_arch


class SmallCNN(nn.Module):
    """conv1/bn1, conv2/bn2 + max-pool, conv3/bn3 + global pool, fc1/bn4 (1d), fc2."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.conv1 = nn.Conv2d(in_channels, w1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, w3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w3)
        self.fc1 = nn.Linear(w3, w3, bias=False)
        self.bn4 = nn.BatchNorm1d(w3)
        self.fc2 = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images ``(N, C, H, W)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu(self.bn3(self.conv3(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        out = F.relu(self.bn4(self.fc1(out)))
        return self.fc2(out)


@register_arch("smallcnn", (1, 28, 28), "small BN CNN (3 conv+BN, Linear+BatchNorm1d, Linear)")
def smallcnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> SmallCNN:
    """Small CNN with conv widths ``width``, 2x, 4x (32/64/128) and a 4x-wide hidden ``fc1``."""
    return SmallCNN(num_classes, in_channels, width)
