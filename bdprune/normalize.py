"""Input normalization: the ``--normalize`` presets and parser, and the one function that applies a
normalization to a batch of images in [0, 1] on the device the model runs on.

Images stay in [0, 1] everywhere in bdprune (data files, triggers, the class probe's
perturbations, which are clipped to [0, 1]); the model sees ``(x - mean) / std`` only at the
forward pass, so a perturbation measured in pixel space means the same for every checkpoint.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from .errors import BdpruneError

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
"""(per-channel means, per-channel standard deviations); one value each applies to every channel."""

NORMALIZATIONS: dict[str, Normalization | None] = {
    "none": None,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
}


def parse_normalize(spec: str) -> Normalization | None:
    """``none``, a preset name, or ``MEAN,STD`` / ``m1,m2,m3,s1,s2,s3`` -> (mean, std) or None."""
    key = spec.strip().lower()
    if key in NORMALIZATIONS:
        return NORMALIZATIONS[key]
    try:
        values = [float(v) for v in key.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 6) or any(not math.isfinite(v) for v in values) or any(s <= 0 for s in values[len(values) // 2 :]):
        raise BdpruneError(
            f"bad --normalize {spec!r}",
            hint=f"use {', '.join(NORMALIZATIONS)}, MEAN,STD or m1,m2,m3,s1,s2,s3 with positive STD",
        )
    half = len(values) // 2
    return tuple(values[:half]), tuple(values[half:])


def normalizer(normalize: Normalization | None, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Callable[[Tensor], Tensor]:
    """``x -> (x - mean) / std`` for N x C x H x W batches on ``device`` (the identity for None)."""
    if normalize is None:
        return lambda x: x
    mean, std = (torch.tensor(v, dtype=dtype, device=device).view(1, -1, 1, 1) for v in normalize)
    return lambda x: (x - mean) / std


def check_channels(normalize: Normalization | None, channels: int) -> None:
    """Refuse a normalization with per-channel values for another number of image channels."""
    if normalize is not None and len(normalize[0]) not in (1, channels):
        raise BdpruneError(f"--normalize has {len(normalize[0])} means for {channels}-channel images")


def as_values(normalize: Sequence | None) -> Normalization | None:
    """A normalization given as a spec string or as (means, stds) values, as values."""
    return parse_normalize(normalize) if isinstance(normalize, str) else normalize
