"""Additive signals: SIG's sinusoid."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._spec import Args, check_images, fmt


class SigTrigger:
    """SIG: add a horizontal sinusoid ``delta * sin(2 pi j freq / W)`` to every row and channel."""

    def __init__(self, spec: str, *, delta: float = 0.08, freq: float = 6.0):
        self.spec, self.delta, self.freq = spec, delta, freq
        self._cache: dict[tuple[int, int, int], Tensor] = {}

    def pattern(self, c: int, h: int, w: int) -> Tensor:
        """Return the ``1 x 1 x W`` signal for images of that shape (computed in float64)."""
        key = (c, h, w)
        if key not in self._cache:
            j = torch.arange(w, dtype=torch.float64)
            signal = self.delta * torch.sin(2 * math.pi * j * self.freq / w)
            self._cache[key] = signal.view(1, 1, w)
        return self._cache[key]

    def apply(self, images: Tensor) -> Tensor:
        """Return ``clip(images + signal, 0, 1)`` as a new tensor."""
        check_images(images, self.spec, "sig")
        sig = self.pattern(*images.shape[1:]).to(device=images.device, dtype=images.dtype)
        return (images + sig).clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``sig:delta=0.08,freq=6``."""
        return f"sig:delta={fmt(self.delta)},freq={fmt(self.freq)}"



def parse(spec: str, items: dict[str, str | None], base_dir: Path | None) -> SigTrigger:
    a = Args(spec, "sig", items, {"delta", "freq"}, set())
    delta = a.number("delta", 0.08, 0.0, 1.0)
    return SigTrigger(spec, delta=delta, freq=a.number("freq", 6.0, 0.0, open_lo=True))



class LowFreqTrigger:
    """A smooth, low-frequency additive pattern (after the LF attack of Zeng et al., ICCV 2021): a
    ``C x k x k`` grid uniform in [-1, 1] from ``torch.Generator().manual_seed(seed)``, upsampled
    to H x W (bicubic, ``align_corners=True``), scaled so its largest magnitude is ``amp``, and
    added to every image: ``x' = clip(x + pattern, 0, 1)``. No pixel changes much, and no
    high-frequency detector sees it."""

    def __init__(self, spec: str, *, k: int = 3, amp: float = 0.1, seed: int = 0):
        self.spec, self.k, self.amp, self.seed = spec, k, amp, seed
        self._cache: dict[tuple[int, int, int], Tensor] = {}

    def pattern(self, c: int, h: int, w: int) -> Tensor:
        """The ``C x H x W`` additive pattern (built once per shape, cached)."""
        key = (c, h, w)
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self.seed)
            grid = torch.rand((1, c, self.k, self.k), generator=gen, dtype=torch.float32) * 2 - 1
            smooth = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)[0]
            self._cache[key] = (self.amp * smooth / smooth.abs().max().clamp_min(1e-12)).contiguous()
        return self._cache[key]

    def apply(self, images: Tensor) -> Tensor:
        """Return ``clip(images + pattern, 0, 1)`` as a new tensor."""
        check_images(images, self.spec, "lowfreq")
        pat = self.pattern(*images.shape[1:]).to(device=images.device, dtype=images.dtype)
        return (images + pat).clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``lowfreq:k=3,amp=0.1,seed=0``."""
        return f"lowfreq:k={self.k},amp={fmt(self.amp)},seed={self.seed}"


def parse_lowfreq(spec: str, items: dict[str, str | None], base_dir: Path | None) -> LowFreqTrigger:
    a = Args(spec, "lowfreq", items, {"k", "amp", "seed"}, set())
    return LowFreqTrigger(spec, k=a.integer("k", 3, 2, 64), amp=a.number("amp", 0.1, 0.0, 1.0),
                          seed=a.integer("seed", 0, 0, 2**63 - 1))
