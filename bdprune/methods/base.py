"""The interface every scoring method implements, and the registry that names them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..registry import Registry
from ..stats import LayerStats

# Below this a variance is treated as zero: the channel is constant. See floor_variance.
VARIANCE_FLOOR = 1e-12


@dataclass
class ScoreContext:
    """What a method may look at: the model, the statistics pass (if its method needs data) and
    a list to which it appends notes for the user (unpaired layers, floored variances)."""

    model: nn.Module
    stats: dict[str, LayerStats] | None
    device: torch.device
    notes: list[str] = field(default_factory=list)


class Method(ABC):
    """A per-channel suspicion score for every BatchNorm layer it can score."""

    name: ClassVar[str]
    summary: ClassVar[str]
    data_role: ClassVar[str | None]  # "clean", "training" or None (data-free)
    needs_moments: ClassVar[bool] = False
    needs_maxima: ClassVar[bool] = False
    low_is_suspicious: ClassVar[bool] = False
    pruned_params: ClassVar[tuple[str, ...]] = ("weight",)
    # "layer": flag per layer at mean + u*std (the papers); "network": one ranking over all channels.
    ranking: ClassVar[str] = "layer"

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
