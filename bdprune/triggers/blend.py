"""Blended: mix every image with a fixed pattern."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._spec import Args, check_images, fmt, load_image, match_channels


class BlendTrigger:
    """Blended: mix every image with a fixed pattern, ``(1 - alpha) x + alpha P``."""

    def __init__(self, spec: str, *, alpha: float = 0.2, image: Tensor | None = None,
                 image_name: str | None = None, seed: int = 0):
        self.spec, self.alpha, self.seed = spec, alpha, seed
        self.image, self.image_name = image, image_name
        self._cache: dict[tuple[int, int, int], Tensor] = {}

    def pattern(self, c: int, h: int, w: int) -> Tensor:
        """Return the ``C x H x W`` blend pattern for images of that shape (built once, cached)."""
        key = (c, h, w)
        if key not in self._cache:
            if self.image is None:
                gen = torch.Generator().manual_seed(self.seed)
                pat = torch.rand((c, h, w), generator=gen, dtype=torch.float32)
            else:
                pat = match_channels(self.image, c, self.spec, "blend")
                if tuple(pat.shape[1:]) != (h, w):
                    pat = F.interpolate(pat[None], size=(h, w), mode="bilinear",
                                        align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)
            self._cache[key] = pat.contiguous()
        return self._cache[key]

    def apply(self, images: Tensor) -> Tensor:
        """Return ``clip((1 - alpha) * images + alpha * P, 0, 1)`` as a new tensor."""
        check_images(images, self.spec, "blend")
        pat = self.pattern(*images.shape[1:]).to(device=images.device, dtype=images.dtype)
        return ((1.0 - self.alpha) * images + self.alpha * pat).clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``blend:noise,seed=0,alpha=0.2``."""
        source = f"image={self.image_name}" if self.image is not None else f"noise,seed={self.seed}"
        return f"blend:{source},alpha={fmt(self.alpha)}"



def parse(spec: str, items: dict[str, str | None], base_dir: Path | None) -> BlendTrigger:
    a = Args(spec, "blend", items, {"image", "alpha", "seed"}, {"noise"})
    if a.has("image") == a.has("noise"):
        raise a.fail("give exactly one of image=FILE or noise")
    if a.has("seed") and not a.has("noise"):
        raise a.fail("seed= only applies to noise")
    alpha = a.number("alpha", 0.2, 0.0, 1.0)
    if a.has("noise"):
        return BlendTrigger(spec, alpha=alpha, seed=a.integer("seed", 0, 0, 2**63 - 1))
    name = a.text("image")
    img = load_image(spec, "blend", name, base_dir)
    return BlendTrigger(spec, alpha=alpha, image=img, image_name=name)



class AdaptiveBlendTrigger:
    """Adaptive-Blend (Qi et al., ICLR 2023): a noise pattern (as ``blend:noise``) cut into
    ``pieces x pieces`` cells; each image is blended, at ``alpha``, with a random ``keep`` share of
    the cells only (drawn per image from ``torch.Generator().manual_seed(seed)`` in call order),
    so no poisoned training image carries the whole trigger. ``keep=1`` is the whole pattern
    (the test-time trigger; the paper also raises alpha at test time)."""

    def __init__(self, spec: str, *, pieces: int = 4, keep: float = 0.5, alpha: float = 0.15, seed: int = 0):
        self.spec, self.pieces, self.keep, self.alpha, self.seed = spec, pieces, keep, alpha, seed
        self._noise = BlendTrigger(spec, alpha=alpha, seed=seed)

    def apply(self, images: Tensor) -> Tensor:
        """Return the images blended with their share of the pattern's cells, as a new tensor."""
        check_images(images, self.spec, "adaptive")
        n, c, h, w = images.shape
        pat = self._noise.pattern(c, h, w).to(device=images.device, dtype=images.dtype)
        cells = self.pieces * self.pieces
        take = max(1, round(self.keep * cells))
        g = torch.Generator().manual_seed(self.seed)
        chosen = torch.zeros((n, cells), dtype=images.dtype)
        for i in range(n):
            chosen[i, torch.randperm(cells, generator=g)[:take]] = 1.0
        rows = torch.arange(h) * self.pieces // h
        cols = torch.arange(w) * self.pieces // w
        cell_of = (rows[:, None] * self.pieces + cols[None, :]).flatten()
        mask = chosen[:, cell_of].view(n, 1, h, w).to(images.device)
        alpha = self.alpha * mask
        return ((1.0 - alpha) * images + alpha * pat).clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``adaptive:pieces=4,keep=0.5,alpha=0.15,seed=0``."""
        return f"adaptive:pieces={self.pieces},keep={fmt(self.keep)},alpha={fmt(self.alpha)},seed={self.seed}"


def parse_adaptive(spec: str, items: dict[str, str | None], base_dir: Path | None) -> AdaptiveBlendTrigger:
    a = Args(spec, "adaptive", items, {"pieces", "keep", "alpha", "seed"}, set())
    return AdaptiveBlendTrigger(spec, pieces=a.integer("pieces", 4, 1, 64), keep=a.number("keep", 0.5, 0.0, 1.0, open_lo=True),
                                alpha=a.number("alpha", 0.15, 0.0, 1.0), seed=a.integer("seed", 0, 0, 2**63 - 1))
