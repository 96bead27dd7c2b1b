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

``lowfreq:k=3,amp=0.1,seed=0``
    A smooth additive pattern (LF attack): a ``C x k x k`` uniform grid upsampled bicubically
    to H x W, scaled to largest magnitude ``amp``, added and clipped.
``adaptive:pieces=4,keep=0.5,alpha=0.15,seed=0``
    Adaptive-Blend: ``blend:noise`` cut into ``pieces x pieces`` cells, each image blended with a
    random ``keep`` share of them (``keep=1``: the whole pattern, as at test time).
``dynamic:alpha=0.2,seed=0``
    Input-dependent: each image blended with its own pattern, a fixed random two-layer conv net
    of the image (no universal pattern exists).
``patch:...,pos=random,seed=S``
    The patch at a random position per image (drawn in call order from ``seed``).

Image paths are relative to ``base_dir`` when one is given. Image files are read when the
spec is parsed; patterns that depend on the images' size are built on the first ``apply``
for each (C, H, W) and cached. Every problem raises :class:`~bdprune.errors.BdpruneError`.
"""


from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor

from . import blend, dynamic, patch, signal, warp
from ._spec import FORMS, split
from .blend import AdaptiveBlendTrigger, BlendTrigger
from .dynamic import DynamicTrigger
from .patch import PatchTrigger
from .signal import LowFreqTrigger, SigTrigger
from .warp import WarpTrigger

__all__ = ["Trigger", "PatchTrigger", "BlendTrigger", "AdaptiveBlendTrigger", "SigTrigger", "LowFreqTrigger", "WarpTrigger",
           "DynamicTrigger", "parse_trigger", "FORMS"]


@runtime_checkable
class Trigger(Protocol):
    """What every trigger offers."""

    def apply(self, images: Tensor) -> Tensor:
        """Return triggered copies of float ``N x C x H x W`` images in [0,1]; input untouched."""
        ...

    def describe(self) -> str:
        """Return the trigger as a canonical spec string."""
        ...



_PARSERS = {"patch": patch.parse, "blend": blend.parse, "sig": signal.parse, "warp": warp.parse, "lowfreq": signal.parse_lowfreq,
            "adaptive": blend.parse_adaptive, "dynamic": dynamic.parse}


def parse_trigger(spec: str, *, base_dir: Path | None = None) -> Trigger:
    """Parse a trigger spec (``patch:``, ``blend:``, ``sig:``, ``warp:``, ``lowfreq:``, ``adaptive:`` or
    ``dynamic:``) into a :class:`Trigger`.

    Image files named by ``image=`` are read now, relative to ``base_dir`` when given. Any
    malformed spec or unreadable file raises :class:`BdpruneError` quoting the spec and the
    accepted form; see the module docstring for the grammar and defaults.
    """
    kind, items = split(spec)
    return _PARSERS[kind](spec, items, base_dir)
