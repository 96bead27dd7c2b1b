"""The interface every scoring method implements, and the registry that names them."""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..data import ImageSet
from ..errors import BdpruneError
from ..registry import Registry
from ..stats import LayerStats

# Below this a variance is treated as zero: the channel is constant. See floor_variance.
VARIANCE_FLOOR = 1e-12


@dataclass
class ScoreContext:
    """What a method may look at: the model, the statistics pass (if its method needs data) and
    a list to which it appends notes for the user (unpaired layers, floored variances).

    Methods that learn (``Method.trains``) also get the samples themselves and how to feed them."""

    model: nn.Module
    stats: dict[str, LayerStats] | None
    device: torch.device
    notes: list[str] = field(default_factory=list)
    data: ImageSet | None = None
    normalize: tuple[Sequence[float], Sequence[float]] | None = None
    seed: int = 0
    show_progress: bool = False


class Method(ABC):
    """A per-channel suspicion score for every BatchNorm layer it can score."""

    name: ClassVar[str]
    summary: ClassVar[str]
    data_role: ClassVar[str | None]  # "clean", "training" or None (data-free)
    needs_moments: ClassVar[bool] = False
    needs_maxima: ClassVar[bool] = False
    low_is_suspicious: ClassVar[bool] = False
    pruned_params: ClassVar[tuple[str, ...]] = ("weight",)
    # "layer": flag per layer at mean + u*std (the papers); "network": one ranking over all channels;
    # "absolute": u is a bound on the raw score itself (a learned mask <= u is flagged).
    ranking: ClassVar[str] = "layer"
    default_u: ClassVar[float] = 3.0
    # Learns on labelled clean samples with gradients (ANP, RNP); scored outside inference mode.
    trains: ClassVar[bool] = False
    # Settings a user may change with ``--method-arg key=value``, with their defaults.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: Mapping[str, str] | None = None):
        self.options = parse_options(self.name, self.defaults, options or {})

    @abstractmethod
    def score(self, ctx: ScoreContext) -> dict[str, Tensor]:
        """Raw float64 scores (one per channel) keyed by BN layer name."""

    def fill_values(self, ctx: ScoreContext) -> dict[str, Tensor] | None:
        """Values a pruned channel's BN bias is set to, per layer; None: pruned parameters become 0."""
        return None


METHODS: Registry[type[Method]] = Registry("method", list_command="bdprune methods")


def floor_variance(var: Tensor, layer: str, what: str, notes: list[str]) -> Tensor:
    """Clamp variances at VARIANCE_FLOOR so a constant channel scores finite, and say so."""
    low = (var < VARIANCE_FLOOR).nonzero().flatten().tolist()
    if low:
        shown = ", ".join(map(str, low[:8])) + (" ..." if len(low) > 8 else "")
        notes.append(f"{layer}: {what} is zero in {len(low)} channel(s) ({shown}); floored at {VARIANCE_FLOOR:g}")
    return var.clamp_min(VARIANCE_FLOOR)


def parse_options(method: str, defaults: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, Any]:
    """``defaults`` overridden by ``given`` (strings from ``--method-arg``), each converted to its
    default's type; an unknown key or a value of the wrong type is one clear error."""
    out = dict(defaults)
    for key, raw in given.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=2)
            known = ", ".join(sorted(defaults)) or "none"
            hint = (f"did you mean {', '.join(close)}? " if close else "") + f"{method} takes: {known}"
            raise BdpruneError(f"--method-arg {key!r} is not a setting of {method}", hint=hint)
        kind = type(defaults[key])
        try:
            value = kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
        except (TypeError, ValueError):
            raise BdpruneError(f"--method-arg {key}={raw!r}: expected {kind.__name__}", hint=f"default {defaults[key]}") from None
        if not math.isfinite(value) or value < 0:
            raise BdpruneError(f"--method-arg {key}={raw!r}: expected a finite number >= 0")
        out[key] = value
    return out
