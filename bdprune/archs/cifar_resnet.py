"""CIFAR ResNets as in kuangliu/pytorch-cifar (the models of "Pre-activation Distributions
Expose Backdoor Neurons"), plus a small member of the same family for 1x28x28 digits.

State-dict keys match that repository: ``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.bn1``, ..., ``layer2.0.shortcut.0`` (1x1 conv), ``layer2.0.shortcut.1`` (BN),
``linear``. The one change is the pooling before ``linear``: ``adaptive_avg_pool2d(out, 1)``
instead of ``avg_pool2d(out, 4)``; for 32x32 inputs the two are identical, and the
adaptive one also takes other sizes (e.g. 28x28).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .spec import register_arch


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with an identity or 1x1 conv+BN shortcut (expansion 1)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward pass."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 conv+BN bottleneck (expansion 4)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward pass."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Empty Sequential (identity) when shapes match, else Sequential(1x1 conv, BN)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(nn.Module):
    """Stem conv3x3 (stride 1, no max-pool) + BN, residual stages, global pool, ``linear``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        for i, (planes, blocks) in enumerate(zip(widths, num_blocks)):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", self._make_layer(block, planes, blocks, stride))
        self.num_stages = len(num_blocks)
        self.linear = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images ``(N, C, H, W)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def infer_width(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``{"width": C}`` from the stem conv's output channels, when the checkpoint has it."""
    weight = state_dict.get("conv1.weight")
    shape = getattr(weight, "shape", None)
    if shape is not None and len(shape) == 4:
        return {"width": int(shape[0])}
    return {}


def _stage_widths(width: int, stages: int) -> list[int]:
    return [width * 2**i for i in range(stages)]


@register_arch(
    "resnet18", (3, 32, 32), "CIFAR ResNet-18 (kuangliu/pytorch-cifar, BasicBlock [2,2,2,2])",
    infer_kwargs=infer_width,
)
def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    """CIFAR ResNet-18; ``width`` is the stem/stage-1 channel count (64 in the paper)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], _stage_widths(width, 4), num_classes, in_channels)


@register_arch(
    "resnet34", (3, 32, 32), "CIFAR ResNet-34 (kuangliu/pytorch-cifar, BasicBlock [3,4,6,3])",
    infer_kwargs=infer_width,
)
def resnet34(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    """CIFAR ResNet-34; ``width`` is the stem/stage-1 channel count (64 by default)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], _stage_widths(width, 4), num_classes, in_channels)


@register_arch(
    "resnet50", (3, 32, 32), "CIFAR ResNet-50 (kuangliu/pytorch-cifar, Bottleneck [3,4,6,3])",
    infer_kwargs=infer_width,
)
def resnet50(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    """CIFAR ResNet-50; ``width`` is the stem/stage-1 channel count (64 by default)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], _stage_widths(width, 4), num_classes, in_channels)


@register_arch(
    "mnist_resnet", (1, 28, 28), "small BN ResNet for 1x28x28 digits (16/32/64 x 2 blocks)",
    infer_kwargs=infer_width,
)
def mnist_resnet(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> ResNet:
    """Small BasicBlock ResNet: stages of ``width``, 2x, 4x channels, 2 blocks each (~175k params)."""
    return ResNet(BasicBlock, [2, 2, 2], _stage_widths(width, 3), num_classes, in_channels)
