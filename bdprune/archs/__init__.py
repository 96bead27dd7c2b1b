"""Model architectures bdprune can build: the built-ins (CIFAR ResNets of the paper, a
pre-activation ResNet-18, VGG-16-BN, two small MNIST models) and external ones
(``torchvision:NAME``, ``timm:NAME``, ``path/to/file.py:factory``, ``package.module:factory``).

This package imports torch; the CLI imports it lazily.
"""

from __future__ import annotations

from . import cifar_resnet, preact_resnet, smallcnn, vgg  # noqa: F401  (they register)
from .build import build_model
from .external import parse_arch_args, parse_literal
from .spec import ARCHS, ArchSpec, register_arch

__all__ = [
    "ARCHS",
    "ArchSpec",
    "build_model",
    "parse_arch_args",
    "parse_literal",
    "register_arch",
]
