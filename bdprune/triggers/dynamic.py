"""An input-dependent trigger: every image gets its own pattern, a fixed function of the image.

After the input-aware attack (Nguyen and Tran, NeurIPS 2020), whose trained generator gives each
image a different trigger. Here the generator is fixed and random, so nothing is trained: two
3x3 convolutions with weights from ``torch.Generator().manual_seed(seed)`` (C -> 8 -> C channels,
tanh between them), a sigmoid of 4x the output as the pattern, blended at ``alpha``:
``x' = clip((1 - alpha) x + alpha G(x), 0, 1)``. No single pattern is shared by the triggered
images, which is what a universal-perturbation search assumes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._spec import Args, check_images, fmt

HIDDEN = 8


class DynamicTrigger:
    """Blend each image with a pattern generated from it by a fixed random two-layer conv net."""

    def __init__(self, spec: str, *, alpha: float = 0.2, seed: int = 0):
        self.spec, self.alpha, self.seed = spec, alpha, seed
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def weights(self, c: int) -> tuple[Tensor, Tensor]:
        """The generator's two conv weights for ``c``-channel images (drawn once, cached)."""
        if c not in self._cache:
            g = torch.Generator().manual_seed(self.seed)
            w1 = torch.randn((HIDDEN, c, 3, 3), generator=g) / (3 * c**0.5)
            w2 = torch.randn((c, HIDDEN, 3, 3), generator=g) / (3 * HIDDEN**0.5)
            self._cache[c] = (w1, w2)
        return self._cache[c]

    def pattern(self, images: Tensor) -> Tensor:
        """Each image's own pattern in [0, 1]."""
        w1, w2 = (w.to(device=images.device, dtype=images.dtype) for w in self.weights(images.shape[1]))
        hidden = torch.tanh(F.conv2d(2 * images - 1, w1, padding=1) * 4)
        return torch.sigmoid(4 * F.conv2d(hidden, w2, padding=1))

    def apply(self, images: Tensor) -> Tensor:
        """Return ``clip((1 - alpha) x + alpha G(x), 0, 1)`` per image, as a new tensor."""
        check_images(images, self.spec, "dynamic")
        return ((1.0 - self.alpha) * images + self.alpha * self.pattern(images)).clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``dynamic:alpha=0.2,seed=0``."""
        return f"dynamic:alpha={fmt(self.alpha)},seed={self.seed}"


def parse(spec: str, items: dict[str, str | None], base_dir: Path | None) -> DynamicTrigger:
    a = Args(spec, "dynamic", items, {"alpha", "seed"}, set())
    return DynamicTrigger(spec, alpha=a.number("alpha", 0.2, 0.0, 1.0), seed=a.integer("seed", 0, 0, 2**63 - 1))
