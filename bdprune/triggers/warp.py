"""WaNet: resample every image through one fixed smooth random warping field."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._spec import Args, check_images, fmt


class WarpTrigger:
    """WaNet: resample every image through one fixed smooth random warping field."""

    def __init__(self, spec: str, *, k: int = 4, s: float = 0.5, seed: int = 0):
        self.spec, self.k, self.s, self.seed = spec, k, s, seed
        self._cache: dict[tuple[int, int], Tensor] = {}

    def field(self) -> Tensor:
        """The ``1 x 2 x k x k`` control field, uniform in [-1, 1], mean absolute value 1."""
        gen = torch.Generator().manual_seed(self.seed)
        ins = torch.rand((1, 2, self.k, self.k), generator=gen, dtype=torch.float32) * 2 - 1
        return ins / ins.abs().mean()

    def grid(self, h: int, w: int) -> Tensor:
        """The ``1 x H x W x 2`` sampling grid (x, y) in [-1, 1] for ``grid_sample`` (cached)."""
        key = (h, w)
        if key not in self._cache:
            noise = F.interpolate(self.field(), size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            identity = torch.stack((xs, ys), dim=-1)[None]
            self._cache[key] = (identity + self.s * noise / h).clamp_(-1.0, 1.0)
        return self._cache[key]

    def apply(self, images: Tensor) -> Tensor:
        """Return the warped images, clamped to [0, 1], as a new tensor."""
        check_images(images, self.spec, "warp")
        n, _, h, w = images.shape
        grid = self.grid(h, w).to(device=images.device, dtype=images.dtype).expand(n, h, w, 2)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``warp:k=4,s=0.5,seed=0``."""
        return f"warp:k={self.k},s={fmt(self.s)},seed={self.seed}"



def parse(spec: str, items: dict[str, str | None], base_dir: Path | None) -> WarpTrigger:
    a = Args(spec, "warp", items, {"k", "s", "seed"}, set())
    return WarpTrigger(spec, k=a.integer("k", 4, 2, 64), s=a.number("s", 0.5, 0.0, 1000.0),
                       seed=a.integer("seed", 0, 0, 2**63 - 1))

