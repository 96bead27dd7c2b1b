"""Pre-activation ResNet-18 as in kuangliu/pytorch-cifar (and BackdoorBench's copy of it).

Keys: ``conv1``, ``layer1.0.bn1``, ``layer1.0.conv1``, ``layer1.0.bn2``, ``layer1.0.conv2``,
``layer2.0.shortcut.0`` (a 1x1 conv, no BN), ..., ``linear``. Like both of those sources
the default model has *no* BatchNorm after the last block. Some forks add one (``bn``,
applied with a ReLU before pooling); ``final_bn=True`` builds that variant, and
:func:`build_model` picks it automatically when the checkpoint has ``bn.weight``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .spec import register_arch


class PreActBlock(nn.Module):
    """bn1 -> relu -> conv1 -> bn2 -> relu -> conv2, plus the shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        # As in the reference: the 1x1 conv shortcut reads the pre-activated input, the
        # identity shortcut reads the raw input; the identity case has no module at all.
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward pass."""
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv3x3, four pre-activation stages, optional final BN, global pool, ``linear``."""

    def __init__(
        self,
        num_blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        final_bn: bool = False,
    ):
        super().__init__()
        widths = [width * 2**i for i in range(len(num_blocks))]
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        for i, (planes, blocks) in enumerate(zip(widths, num_blocks)):
            layers = []
            for s in [1 if i == 0 else 2] + [1] * (blocks - 1):
                layers.append(PreActBlock(self.in_planes, planes, s))
                self.in_planes = planes * PreActBlock.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(num_blocks)
        self.bn = nn.BatchNorm2d(self.in_planes) if final_bn else None
        self.linear = nn.Linear(self.in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images ``(N, C, H, W)``."""
        out = self.conv1(x)
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def infer_preact_kwargs(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``width`` from the stem conv and ``final_bn`` from the presence of ``bn.weight``."""
    kwargs: dict[str, Any] = {"final_bn": "bn.weight" in state_dict}
    shape = getattr(state_dict.get("conv1.weight"), "shape", None)
    if shape is not None and len(shape) == 4:
        kwargs["width"] = int(shape[0])
    return kwargs


@register_arch(
    "preactresnet18", (3, 32, 32),
    "CIFAR pre-activation ResNet-18 (kuangliu/pytorch-cifar, BackdoorBench)",
    infer_kwargs=infer_preact_kwargs,
)
def preactresnet18(
    num_classes: int = 10, in_channels: int = 3, width: int = 64, final_bn: bool = False
) -> PreActResNet:
    """Pre-activation ResNet-18; ``final_bn=True`` adds a BN+ReLU (``bn``) before pooling."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width, final_bn)
