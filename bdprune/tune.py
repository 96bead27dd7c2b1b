"""Choose how much to prune from a clean-accuracy budget on validation data, never from poisoned
or test data: u for the per-layer methods, the number of channels k for network-ranked ones (bnp+)."""

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
    """One grid point: u (None on a k curve, where ``channels`` is k), channels it prunes,
    validation accuracy after pruning."""

    u: float | None
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
    val_acc = _val_accuracy(model, result, val, max_acc_drop, device=device, batch_size=batch_size, normalize=normalize)
    base = val_acc({})
    curve = []
    for u in sorted(grid, reverse=True):
        flagged = result.rethreshold(u).flagged_channels()
        curve.append(CurvePoint(u, sum(map(len, flagged.values())), val_acc(flagged)))
    ok = [p for p in curve if base - p.acc <= max_acc_drop]
    # With no grid point inside the budget nothing is pruned (u = inf flags no channel).
    chosen = min(ok, key=lambda p: p.u).u if ok else math.inf
    return chosen, base, curve


def k_grid(total: int, cap: float = 0.25) -> list[int]:
    """1, 2, 3, 4, 6, 8, 11, 16, 23, 32, ... (steps of about sqrt 2) up to ``cap`` of ``total`` channels."""
    out, k = [], 1
    while k <= max(1, int(cap * total)):
        out.append(k)
        k = max(k + 1, round(k * math.sqrt(2)))
    return out


def choose_k(
    model: nn.Module,
    result: ScanResult,
    val: ImageSet,
    max_acc_drop: float,
    *,
    device: torch.device,
    batch_size: int = 256,
    normalize=None,
    grid: list[int] | None = None,
) -> tuple[int, float, list[CurvePoint]]:
    """The number k of top-ranked channels to prune: walk ``grid`` (default :func:`k_grid`) upward
    and keep the last k before validation ACC first falls more than ``max_acc_drop`` points below
    the unpruned model's (0 when k = 1 already does). Stopping at the first breach, rather than
    taking the largest k anywhere within budget, keeps a noisy curve from pruning past a cliff.
    Returns (k, unpruned ACC, the curve measured)."""
    val_acc = _val_accuracy(model, result, val, max_acc_drop, device=device, batch_size=batch_size, normalize=normalize)
    base = val_acc({})
    chosen, curve = 0, []
    for k in grid if grid is not None else k_grid(result.channels_total):
        point = CurvePoint(None, k, val_acc(result.top(k)))
        curve.append(point)
        if base - point.acc > max_acc_drop:
            break
        chosen = k
    return chosen, base, curve


def _val_accuracy(model, result: ScanResult, val: ImageSet, max_acc_drop: float, *, device, batch_size, normalize):
    """Check the budget's inputs; return a function: channels to prune -> validation ACC of the pruned copy."""
    if val.labels is None:
        raise BdpruneError("validation data has no labels", path=val.source, hint="--val needs labelled clean images")
    if not max_acc_drop >= 0:
        raise BdpruneError(f"--max-acc-drop must be >= 0, got {max_acc_drop}")
    kwargs = dict(device=device, batch_size=batch_size, normalize=normalize)

    def val_acc(channels: dict[str, list[int]]) -> float:
        trial = model
        if channels:
            trial = copy.deepcopy(model)
            mask_model(trial, channels, result.pruned_params, result.fill)
        try:
            return accuracy(predict(trial, val.images, **kwargs), val.labels)
        except BdpruneError as exc:  # images that do not fit the model: name the --val file
            raise exc.with_path(val.source) from None

    return val_acc
