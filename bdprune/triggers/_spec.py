"""Parsing helpers shared by the trigger kinds: the spec grammar ``kind:key=value,flag``, typed
access to its items, and the small image utilities every kind needs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import BdpruneError

FORMS = {
    "patch": "patch:size=N[,pos=tl|tr|bl|br|X:Y|random][,margin=M][,seed=S][,color=G|#rrggbb|R:G:B][,checker]"
    " or patch:image=FILE[,pos=...][,margin=M]",
    "blend": "blend:image=FILE[,alpha=A] or blend:noise[,seed=S][,alpha=A] with A in [0,1]",
    "sig": "sig:[delta=D][,freq=F] with D in [0,1] and F > 0",
    "warp": "warp:[k=K][,s=S][,seed=N] with K >= 2 and S >= 0",
    "lowfreq": "lowfreq:[k=K][,amp=A][,seed=N] with K >= 2 and A in [0,1]",
    "adaptive": "adaptive:[pieces=P][,keep=K][,alpha=A][,seed=N] with P >= 1 and K, A in [0,1]",
    "dynamic": "dynamic:[alpha=A][,seed=N] with A in [0,1]",
}
ALL_FORMS = "expected one of " + "; ".join(FORMS.values())
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL uses for RGB -> L
CORNERS = ("tl", "tr", "bl", "br")


def fail(spec: str, problem: str, kind: str | None = None) -> BdpruneError:
    hint = f"expected {FORMS[kind]}" if kind in FORMS else ALL_FORMS
    return BdpruneError(f"bad trigger spec {spec!r}: {problem}", hint=hint)


def fmt(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def check_images(images: Tensor, spec: str, kind: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        if isinstance(images, Tensor):
            got = f"{tuple(images.shape)} {images.dtype}"
        else:
            got = type(images).__name__
        raise fail(spec, f"images must be a float N x C x H x W tensor, got {got}", kind)


def match_channels(pattern: Tensor, channels: int, spec: str, kind: str) -> Tensor:
    """Bring a ``k x h x w`` pattern (k = 1 or 3) to ``channels`` channels."""
    k = pattern.shape[0]
    if k == channels:
        return pattern
    if k == 1:
        return pattern.expand(channels, *pattern.shape[1:]).clone()
    if k == 3 and channels == 1:
        r, g, b = LUMA
        return (r * pattern[0] + g * pattern[1] + b * pattern[2]).unsqueeze(0)
    raise fail(spec, f"cannot fit a {k}-channel pattern to {channels}-channel images", kind)


def load_image(spec: str, kind: str, name: str, base_dir: Path | None) -> Tensor:
    """Read an image file as a float ``k x h x w`` tensor in [0,1] (k = 1 for gray, else 3)."""
    from PIL import Image

    try:
        path = Path(name) if base_dir is None else Path(base_dir) / name
        with Image.open(path) as img:
            img.load()
            mode = "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            arr = np.asarray(img.convert(mode), dtype=np.float32) / np.float32(255.0)
    except Exception as err:  # PIL raises many types for missing/corrupt files
        detail = " ".join(str(err).split()) or type(err).__name__
        raise fail(spec, f"cannot read image {name!r}: {detail}", kind) from err
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def split(spec: str) -> tuple[str, dict[str, str | None]]:
    """Split ``kind:a=1,b,c=2`` into the kind and ``{key: value or None for flags}``."""
    if not isinstance(spec, str):
        raise BdpruneError(f"bad trigger spec {spec!r}: not a string", hint=ALL_FORMS)
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip()
    if kind not in FORMS:
        raise fail(spec, f"unknown trigger kind {kind!r}")
    items: dict[str, str | None] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not key:
                raise fail(spec, "empty item", kind)
            if key in items:
                raise fail(spec, f"{key!r} given twice", kind)
            items[key] = value.strip() if eq else None
    return kind, items


class Args:
    """Typed access to the key=value items of one spec."""

    def __init__(self, spec: str, kind: str, items: dict[str, str | None],
                 allowed: set[str], flags: set[str]):
        self.spec, self.kind, self.items = spec, kind, items
        for key, value in items.items():
            if key not in allowed | flags:
                raise self.fail(f"unknown key {key!r}")
            if key in flags and value is not None:
                raise self.fail(f"{key!r} is a flag and takes no value")
            if key in allowed and value is None:
                raise self.fail(f"{key!r} needs a value ({key}=...)")

    def fail(self, problem: str) -> BdpruneError:
        return fail(self.spec, problem, self.kind)

    def has(self, key: str) -> bool:
        return key in self.items

    def text(self, key: str) -> str:
        value = self.items[key]
        if not value:
            raise self.fail(f"{key!r} needs a value")
        return value

    def number(self, key: str, default: float, lo: float, hi: float = math.inf, *,
               open_lo: bool = False) -> float:
        if key not in self.items:
            return default
        raw = self.text(key)
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(f"{key}={raw!r} is not a number") from None
        if not math.isfinite(value) or value > hi or value < lo or (open_lo and value == lo):
            bound = f"{'>' if open_lo else '>='} {fmt(lo)}"
            if hi != math.inf:
                bound += f" and <= {fmt(hi)}"
            raise self.fail(f"{key}={raw!r} must be {bound}")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        if key not in self.items:
            return default
        return parse_int(self, key, self.text(key), lo, hi)


def parse_int(args: Args, key: str, raw: str, lo: int, hi: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise args.fail(f"{key}={raw!r} is not a whole number") from None
    if value < lo or (hi is not None and value > hi):
        raise args.fail(f"{key}={raw!r} must be >= {lo}" + ("" if hi is None else f" and <= {hi}"))
    return value


def parse_color(args: Args, raw: str) -> tuple[float, ...]:
    if raw.startswith("#"):
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", raw):
            raise args.fail(f"color={raw!r} is not #rrggbb")
        return tuple(int(raw[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
    parts = raw.split(":")
    if len(parts) not in (1, 3):
        raise args.fail(f"color={raw!r} must be a gray level, #rrggbb or R:G:B")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise args.fail(f"color={raw!r} is not a number") from None
        if not (0.0 <= value <= 1.0):
            raise args.fail(f"color={raw!r} must have values in [0,1]")
        values.append(value)
    return tuple(values)

