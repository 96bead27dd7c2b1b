"""Choose u from a clean-accuracy budget on validation data, never from poisoned or test data."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .data import ImageSet
from .errors import BdpruneError
from .evaluate import accuracy, predict
from .prune import mask_model
from .scoring import ScanResult

U_GRID = (8.0, 6.0, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0)


@dataclass
class CurvePoint:
    """One grid point: u, channels it prunes, validation accuracy after pruning."""

    u: float
    channels: int
    acc: float


def choose_u(
    model: nn.Module,
    result: ScanResult,
    val: ImageSet,
    max_acc_drop: float,
    *,
    device: torch.device,
    batch_size: int = 256,
    normalize=None,
    grid: tuple[float, ...] = U_GRID,
) -> tuple[float, float, list[CurvePoint]]:
    """The most aggressive (smallest) u on ``grid`` whose validation ACC falls at most ``max_acc_drop``
    points below the unpruned model's; returns (u, unpruned ACC, the whole curve)."""
    if val.labels is None:
        raise BdpruneError("validation data has no labels", path=val.source, hint="--val needs labelled clean images")
    if not max_acc_drop >= 0:
        raise BdpruneError(f"--max-acc-drop must be >= 0, got {max_acc_drop}")
    kwargs = dict(device=device, batch_size=batch_size, normalize=normalize)
    try:
        base = accuracy(predict(model, val.images, **kwargs), val.labels)
    except BdpruneError as exc:  # images that do not fit the model: name the --val file
        raise exc.with_path(val.source) from None
    curve = []
    for u in sorted(grid, reverse=True):
        flagged = result.rethreshold(u).flagged_channels()
        trial = copy.deepcopy(model)
        mask_model(trial, flagged, result.pruned_params)
        curve.append(CurvePoint(u, sum(map(len, flagged.values())), accuracy(predict(trial, val.images, **kwargs), val.labels)))
    ok = [p for p in curve if base - p.acc <= max_acc_drop]
    # With no grid point inside the budget nothing is pruned (u = inf flags no channel).
    chosen = min(ok, key=lambda p: p.u).u if ok else math.inf
    return chosen, base, curve
