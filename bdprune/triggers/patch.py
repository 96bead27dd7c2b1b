"""BadNets: a solid, checkerboard or image patch at a corner, a fixed position, or a random
position per image (``pos=random``: the patch moves, so no pixel position carries the trigger)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ._spec import (
    CORNERS,
    Args,
    check_images,
    fail,
    fmt,
    load_image,
    match_channels,
    parse_color,
    parse_int,
)


class PatchTrigger:
    """BadNets: paste a solid, checkerboard or image patch at a corner or explicit position."""

    def __init__(self, spec: str, *, size: int | None = None, pos: str | tuple[int, int] = "br",
                 margin: int = 1, color: tuple[float, ...] = (1.0,), checker: bool = False,
                 image: Tensor | None = None, image_name: str | None = None, seed: int = 0):
        self.spec, self.size, self.pos, self.margin, self.seed = spec, size, pos, margin, seed
        self.color, self.checker, self.image, self.image_name = color, checker, image, image_name
        self._cache: dict[tuple[int, int, int], tuple[Tensor, int, int]] = {}

    def _pattern(self, c: int, h: int, w: int) -> tuple[Tensor, int, int]:
        key = (c, h, w)
        if key in self._cache:
            return self._cache[key]
        if self.image is not None:
            ph, pw = self.image.shape[1:]
        else:
            ph = pw = self.size
        if isinstance(self.pos, tuple):
            x, y = self.pos
        elif self.pos == "random":
            x = y = 0  # drawn per image in apply(); the patch must fit the image
        else:
            x = self.margin if self.pos[1] == "l" else w - self.margin - pw
            y = self.margin if self.pos[0] == "t" else h - self.margin - ph
        if x < 0 or y < 0 or x + pw > w or y + ph > h:
            raise fail(self.spec, f"a {ph}x{pw} patch at column {x}, row {y} does not fit in "
                        f"{h}x{w} images", "patch")
        if self.image is not None:
            patch = match_channels(self.image, c, self.spec, "patch")
        elif self.checker:
            idx = torch.arange(pw)
            board = ((idx[:, None] + idx[None, :]) % 2 == 0).to(torch.float32)
            patch = board.expand(c, ph, pw).clone()
        else:
            color = torch.tensor(self.color, dtype=torch.float32).view(-1, 1, 1).expand(-1, ph, pw)
            patch = match_channels(color, c, self.spec, "patch").contiguous()
        self._cache[key] = (patch, x, y)
        return self._cache[key]

    def apply(self, images: Tensor) -> Tensor:
        """Return copies of ``images`` with the patch pasted in; raises if it does not fit."""
        check_images(images, self.spec, "patch")
        _, c, h, w = images.shape
        patch, x, y = self._pattern(c, h, w)
        ph, pw = patch.shape[1:]
        out = images.clone()
        patch = patch.to(device=images.device, dtype=images.dtype)
        if self.pos == "random":  # one position per image, the same for the same call order
            g = torch.Generator().manual_seed(self.seed)
            xs = torch.randint(0, w - pw + 1, (len(images),), generator=g).tolist()
            ys = torch.randint(0, h - ph + 1, (len(images),), generator=g).tolist()
            for i, (x, y) in enumerate(zip(xs, ys)):
                out[i, :, y : y + ph, x : x + pw] = patch
        else:
            out[:, :, y : y + ph, x : x + pw] = patch
        return out.clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``patch:size=3,pos=br,margin=1,color=1``."""
        parts = [f"image={self.image_name}" if self.image is not None else f"size={self.size}"]
        if isinstance(self.pos, tuple):
            parts.append(f"pos={self.pos[0]}:{self.pos[1]}")
        elif self.pos == "random":
            parts += ["pos=random", f"seed={self.seed}"]
        else:
            parts += [f"pos={self.pos}", f"margin={self.margin}"]
        if self.checker:
            parts.append("checker")
        elif self.image is None:
            parts.append("color=" + ":".join(fmt(v) for v in self.color))
        return "patch:" + ",".join(parts)



def parse(spec: str, items: dict[str, str | None], base_dir: Path | None) -> PatchTrigger:
    a = Args(spec, "patch", items, {"size", "pos", "margin", "color", "image", "seed"}, {"checker"})
    if a.has("image") and (a.has("size") or a.has("checker") or a.has("color")):
        raise a.fail("image= cannot be combined with size=, color= or checker")
    if a.has("checker") and a.has("color"):
        raise a.fail("checker cannot be combined with color=")
    pos: str | tuple[int, int] = "br"
    if a.has("pos"):
        raw = a.text("pos")
        if raw in CORNERS or raw == "random":
            pos = raw
            if raw == "random" and a.has("margin"):
                raise a.fail("margin= only applies to corner positions, not pos=random")
        elif raw.count(":") == 1:
            if a.has("margin"):
                raise a.fail("margin= only applies to corner positions, not pos=X:Y")
            xs, ys = raw.split(":")
            pos = (parse_int(a, "pos x", xs, 0), parse_int(a, "pos y", ys, 0))
        else:
            raise a.fail(f"pos={raw!r} must be tl, tr, bl, br, random or X:Y")
    if a.has("seed") and pos != "random":
        raise a.fail("seed= only applies to pos=random")
    margin = a.integer("margin", 0 if pos == "random" else 1, 0)
    seed = a.integer("seed", 0, 0, 2**63 - 1)
    if a.has("image"):
        name = a.text("image")
        img = load_image(spec, "patch", name, base_dir)
        return PatchTrigger(spec, pos=pos, margin=margin, image=img, image_name=name, seed=seed)
    size = a.integer("size", 3, 1)
    color = parse_color(a, a.text("color")) if a.has("color") else (1.0,)
    return PatchTrigger(spec, size=size, pos=pos, margin=margin, color=color, checker=a.has("checker"), seed=seed)

