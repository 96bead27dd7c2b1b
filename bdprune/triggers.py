"""Backdoor triggers: BadNets patches, Blended images/noise, SIG sinusoids and WaNet warps.

A trigger is anything with ``apply(images)`` and ``describe()`` (see :class:`Trigger`). Images
are float tensors ``N x C x H x W`` with values in ``[0, 1]`` (not normalized); ``apply``
returns a new tensor, clamped to ``[0, 1]``, and never modifies its input.

Triggers are written as specs, ``kind:key=value,key=value,flag`` (a bare word is a flag):

``patch:size=3,pos=br,margin=1,color=1``
    BadNets square of ``size x size`` pixels. ``pos`` is a corner (``tl``, ``tr``, ``bl``,
    ``br``; default ``br``) placed ``margin`` pixels in from both edges (default 1, the usual
    BadNets offset), or ``pos=X:Y``, the top-left pixel of the patch at column X, row Y
    (``margin`` is then not allowed). ``color`` is a gray level in [0,1] (default 1, white),
    ``#rrggbb`` or ``R:G:B`` floats in [0,1]; on 1-channel images an RGB color becomes its
    BT.601 luminance (0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``).
    The ``checker`` flag draws a black/white checkerboard instead (top-left pixel white,
    pixel (row r, column c) white when r + c is even). ``image=FILE`` uses a picture as the
    patch (its size is the file's size; grayscale files stay 1-channel, others become RGB,
    alpha dropped); ``image``, ``size``/``checker`` and ``color`` are mutually exclusive
    where they would disagree.
``blend:image=P.png,alpha=0.2`` / ``blend:noise,seed=0,alpha=0.2``
    Blended attack, ``x' = (1 - alpha) x + alpha P``. ``P`` is the picture resized to the
    images' H x W (bilinear, ``align_corners=False``, antialiased when shrinking), or uniform
    noise of shape C x H x W from ``torch.Generator().manual_seed(seed)`` (default seed 0).
    Default alpha 0.2.
``sig:delta=0.08,freq=6``
    SIG (Barni et al. 2019): ``x' = clip(x + delta sin(2 pi j freq / W), 0, 1)`` for column
    j, the same for every row and channel. Defaults delta 0.08 (about 20/255), freq 6.
``warp:k=4,s=0.5,seed=0``
    WaNet (Nguyen and Tran, ICLR 2021): resample every image through one fixed, smooth warping
    field. A ``2 x k x k`` field is drawn uniform in [-1, 1] from
    ``torch.Generator().manual_seed(seed)``, divided by its mean absolute value, upsampled to
    H x W (bicubic, ``align_corners=True``) and added, times ``s / H``, to the identity sampling
    grid in ``grid_sample``'s [-1, 1] coordinates (both axes scaled by ``1 / H``, as WaNet's code
    does); the grid is clamped to [-1, 1] and the images resampled bilinearly
    (``align_corners=True``, so ``s = 0`` returns the images unchanged up to float rounding).
    A pixel moves by at most about ``s`` pixels (about ``s / 4`` on average for k = 4). Defaults k 4, s 0.5, seed 0 (WaNet's CIFAR-10 settings; small
    models on few images learn a stronger ``s`` more easily). No noise mode.

Image paths are relative to ``base_dir`` when one is given. Image files are read when the
spec is parsed; patterns that depend on the images' size are built on the first ``apply``
for each (C, H, W) and cached. Every problem raises :class:`~bdprune.errors.BdpruneError`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import BdpruneError

__all__ = ["Trigger", "PatchTrigger", "BlendTrigger", "SigTrigger", "WarpTrigger", "parse_trigger", "FORMS"]

FORMS = {
    "patch": "patch:size=N[,pos=tl|tr|bl|br|X:Y][,margin=M][,color=G|#rrggbb|R:G:B][,checker]"
    " or patch:image=FILE[,pos=...][,margin=M]",
    "blend": "blend:image=FILE[,alpha=A] or blend:noise[,seed=S][,alpha=A] with A in [0,1]",
    "sig": "sig:[delta=D][,freq=F] with D in [0,1] and F > 0",
    "warp": "warp:[k=K][,s=S][,seed=N] with K >= 2 and S >= 0",
}
_ALL_FORMS = "expected one of " + "; ".join(FORMS.values())
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL uses for RGB -> L
_CORNERS = ("tl", "tr", "bl", "br")


@runtime_checkable
class Trigger(Protocol):
    """What every trigger offers."""

    def apply(self, images: Tensor) -> Tensor:
        """Return triggered copies of float ``N x C x H x W`` images in [0,1]; input untouched."""
        ...

    def describe(self) -> str:
        """Return the trigger as a canonical spec string."""
        ...


def _fail(spec: str, problem: str, kind: str | None = None) -> BdpruneError:
    hint = f"expected {FORMS[kind]}" if kind in FORMS else _ALL_FORMS
    return BdpruneError(f"bad trigger spec {spec!r}: {problem}", hint=hint)


def _fmt(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _check_images(images: Tensor, spec: str, kind: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        if isinstance(images, Tensor):
            got = f"{tuple(images.shape)} {images.dtype}"
        else:
            got = type(images).__name__
        raise _fail(spec, f"images must be a float N x C x H x W tensor, got {got}", kind)


def _match_channels(pattern: Tensor, channels: int, spec: str, kind: str) -> Tensor:
    """Bring a ``k x h x w`` pattern (k = 1 or 3) to ``channels`` channels."""
    k = pattern.shape[0]
    if k == channels:
        return pattern
    if k == 1:
        return pattern.expand(channels, *pattern.shape[1:]).clone()
    if k == 3 and channels == 1:
        r, g, b = _LUMA
        return (r * pattern[0] + g * pattern[1] + b * pattern[2]).unsqueeze(0)
    raise _fail(spec, f"cannot fit a {k}-channel pattern to {channels}-channel images", kind)


def _load_image(spec: str, kind: str, name: str, base_dir: Path | None) -> Tensor:
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
        raise _fail(spec, f"cannot read image {name!r}: {detail}", kind) from err
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _split(spec: str) -> tuple[str, dict[str, str | None]]:
    """Split ``kind:a=1,b,c=2`` into the kind and ``{key: value or None for flags}``."""
    if not isinstance(spec, str):
        raise BdpruneError(f"bad trigger spec {spec!r}: not a string", hint=_ALL_FORMS)
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip()
    if kind not in FORMS:
        raise _fail(spec, f"unknown trigger kind {kind!r}")
    items: dict[str, str | None] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not key:
                raise _fail(spec, "empty item", kind)
            if key in items:
                raise _fail(spec, f"{key!r} given twice", kind)
            items[key] = value.strip() if eq else None
    return kind, items


class _Args:
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
        return _fail(self.spec, problem, self.kind)

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
            bound = f"{'>' if open_lo else '>='} {_fmt(lo)}"
            if hi != math.inf:
                bound += f" and <= {_fmt(hi)}"
            raise self.fail(f"{key}={raw!r} must be {bound}")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        if key not in self.items:
            return default
        return _parse_int(self, key, self.text(key), lo, hi)


def _parse_int(args: _Args, key: str, raw: str, lo: int, hi: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise args.fail(f"{key}={raw!r} is not a whole number") from None
    if value < lo or (hi is not None and value > hi):
        raise args.fail(f"{key}={raw!r} must be >= {lo}" + ("" if hi is None else f" and <= {hi}"))
    return value


def _parse_color(args: _Args, raw: str) -> tuple[float, ...]:
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


class PatchTrigger:
    """BadNets: paste a solid, checkerboard or image patch at a corner or explicit position."""

    def __init__(self, spec: str, *, size: int | None = None, pos: str | tuple[int, int] = "br",
                 margin: int = 1, color: tuple[float, ...] = (1.0,), checker: bool = False,
                 image: Tensor | None = None, image_name: str | None = None):
        self.spec, self.size, self.pos, self.margin = spec, size, pos, margin
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
        else:
            x = self.margin if self.pos[1] == "l" else w - self.margin - pw
            y = self.margin if self.pos[0] == "t" else h - self.margin - ph
        if x < 0 or y < 0 or x + pw > w or y + ph > h:
            raise _fail(self.spec, f"a {ph}x{pw} patch at column {x}, row {y} does not fit in "
                        f"{h}x{w} images", "patch")
        if self.image is not None:
            patch = _match_channels(self.image, c, self.spec, "patch")
        elif self.checker:
            idx = torch.arange(pw)
            board = ((idx[:, None] + idx[None, :]) % 2 == 0).to(torch.float32)
            patch = board.expand(c, ph, pw).clone()
        else:
            color = torch.tensor(self.color, dtype=torch.float32).view(-1, 1, 1).expand(-1, ph, pw)
            patch = _match_channels(color, c, self.spec, "patch").contiguous()
        self._cache[key] = (patch, x, y)
        return self._cache[key]

    def apply(self, images: Tensor) -> Tensor:
        """Return copies of ``images`` with the patch pasted in; raises if it does not fit."""
        _check_images(images, self.spec, "patch")
        _, c, h, w = images.shape
        patch, x, y = self._pattern(c, h, w)
        ph, pw = patch.shape[1:]
        out = images.clone()
        out[:, :, y : y + ph, x : x + pw] = patch.to(device=images.device, dtype=images.dtype)
        return out.clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``patch:size=3,pos=br,margin=1,color=1``."""
        parts = [f"image={self.image_name}" if self.image is not None else f"size={self.size}"]
        if isinstance(self.pos, tuple):
            parts.append(f"pos={self.pos[0]}:{self.pos[1]}")
        else:
            parts += [f"pos={self.pos}", f"margin={self.margin}"]
        if self.checker:
            parts.append("checker")
        elif self.image is None:
            parts.append("color=" + ":".join(_fmt(v) for v in self.color))
        return "patch:" + ",".join(parts)


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
                pat = _match_channels(self.image, c, self.spec, "blend")
                if tuple(pat.shape[1:]) != (h, w):
                    pat = F.interpolate(pat[None], size=(h, w), mode="bilinear",
                                        align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)
            self._cache[key] = pat.contiguous()
        return self._cache[key]

    def apply(self, images: Tensor) -> Tensor:
        """Return ``clip((1 - alpha) * images + alpha * P, 0, 1)`` as a new tensor."""
        _check_images(images, self.spec, "blend")
        pat = self.pattern(*images.shape[1:]).to(device=images.device, dtype=images.dtype)
        return ((1.0 - self.alpha) * images + self.alpha * pat).clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``blend:noise,seed=0,alpha=0.2``."""
        source = f"image={self.image_name}" if self.image is not None else f"noise,seed={self.seed}"
        return f"blend:{source},alpha={_fmt(self.alpha)}"


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
        _check_images(images, self.spec, "sig")
        sig = self.pattern(*images.shape[1:]).to(device=images.device, dtype=images.dtype)
        return (images + sig).clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``sig:delta=0.08,freq=6``."""
        return f"sig:delta={_fmt(self.delta)},freq={_fmt(self.freq)}"


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
        _check_images(images, self.spec, "warp")
        n, _, h, w = images.shape
        grid = self.grid(h, w).to(device=images.device, dtype=images.dtype).expand(n, h, w, 2)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.clamp_(0.0, 1.0)

    def describe(self) -> str:
        """Return the canonical spec, e.g. ``warp:k=4,s=0.5,seed=0``."""
        return f"warp:k={self.k},s={_fmt(self.s)},seed={self.seed}"


def _parse_patch(spec: str, items: dict[str, str | None], base_dir: Path | None) -> PatchTrigger:
    a = _Args(spec, "patch", items, {"size", "pos", "margin", "color", "image"}, {"checker"})
    if a.has("image") and (a.has("size") or a.has("checker") or a.has("color")):
        raise a.fail("image= cannot be combined with size=, color= or checker")
    if a.has("checker") and a.has("color"):
        raise a.fail("checker cannot be combined with color=")
    pos: str | tuple[int, int] = "br"
    if a.has("pos"):
        raw = a.text("pos")
        if raw in _CORNERS:
            pos = raw
        elif raw.count(":") == 1:
            if a.has("margin"):
                raise a.fail("margin= only applies to corner positions, not pos=X:Y")
            xs, ys = raw.split(":")
            pos = (_parse_int(a, "pos x", xs, 0), _parse_int(a, "pos y", ys, 0))
        else:
            raise a.fail(f"pos={raw!r} must be tl, tr, bl, br or X:Y")
    margin = a.integer("margin", 1, 0)
    if a.has("image"):
        name = a.text("image")
        img = _load_image(spec, "patch", name, base_dir)
        return PatchTrigger(spec, pos=pos, margin=margin, image=img, image_name=name)
    size = a.integer("size", 3, 1)
    color = _parse_color(a, a.text("color")) if a.has("color") else (1.0,)
    return PatchTrigger(spec, size=size, pos=pos, margin=margin, color=color,
                        checker=a.has("checker"))


def _parse_blend(spec: str, items: dict[str, str | None], base_dir: Path | None) -> BlendTrigger:
    a = _Args(spec, "blend", items, {"image", "alpha", "seed"}, {"noise"})
    if a.has("image") == a.has("noise"):
        raise a.fail("give exactly one of image=FILE or noise")
    if a.has("seed") and not a.has("noise"):
        raise a.fail("seed= only applies to noise")
    alpha = a.number("alpha", 0.2, 0.0, 1.0)
    if a.has("noise"):
        return BlendTrigger(spec, alpha=alpha, seed=a.integer("seed", 0, 0, 2**63 - 1))
    name = a.text("image")
    img = _load_image(spec, "blend", name, base_dir)
    return BlendTrigger(spec, alpha=alpha, image=img, image_name=name)


def _parse_sig(spec: str, items: dict[str, str | None], base_dir: Path | None) -> SigTrigger:
    a = _Args(spec, "sig", items, {"delta", "freq"}, set())
    delta = a.number("delta", 0.08, 0.0, 1.0)
    return SigTrigger(spec, delta=delta, freq=a.number("freq", 6.0, 0.0, open_lo=True))


def _parse_warp(spec: str, items: dict[str, str | None], base_dir: Path | None) -> WarpTrigger:
    a = _Args(spec, "warp", items, {"k", "s", "seed"}, set())
    return WarpTrigger(spec, k=a.integer("k", 4, 2, 64), s=a.number("s", 0.5, 0.0, 1000.0),
                       seed=a.integer("seed", 0, 0, 2**63 - 1))


def parse_trigger(spec: str, *, base_dir: Path | None = None) -> Trigger:
    """Parse a trigger spec (``patch:...``, ``blend:...``, ``sig:...`` or ``warp:...``) into a :class:`Trigger`.

    Image files named by ``image=`` are read now, relative to ``base_dir`` when given. Any
    malformed spec or unreadable file raises :class:`BdpruneError` quoting the spec and the
    accepted form; see the module docstring for the grammar and defaults.
    """
    kind, items = _split(spec)
    parser = {"patch": _parse_patch, "blend": _parse_blend, "sig": _parse_sig, "warp": _parse_warp}[kind]
    return parser(spec, items, base_dir)
