"""Random test images, importable by any test module (``from _images import make_images``; a
module named ``conftest`` is ambiguous between tests/ and tests/hostile/)."""

from __future__ import annotations

import torch

TINY_SHAPE = (1, 8, 8)  # what the tests' ``smallcnn`` at width 8 eats


def make_images(n: int, seed: int = 1, shape: tuple[int, int, int] = TINY_SHAPE) -> torch.Tensor:
    """``n`` float32 images in [0, 1], deterministic for ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g)
