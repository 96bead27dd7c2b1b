"""EP (Zheng et al., NeurIPS 2022): entropy of each channel's pre-activation maxima.

Per sample and channel take the spatial maximum of the BN input (BatchNorm1d: the value itself),
standardize each channel over the N samples, histogram with bins of width 0.01 and score
entropy = -sum p log p with p = count / N. LOW entropy is suspicious.

Bins follow the official code exactly: they start at the layer's minimum standardized value
``lo`` (over all its channels), n_bins = floor((max - lo) / 0.01), bin k is the OPEN interval
(lo + k*0.01, lo + (k+1)*0.01). A value lying exactly on an edge (the layer minimum itself
included) or beyond the last edge is not counted, so p need not sum to 1. The official per-bin
Python loop is replaced by one sort-and-count over all channels at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import METHODS, Method, ScoreContext

BIN_WIDTH = 0.01


def standardize(maxima: Tensor) -> Tensor:
    """Standardize each row of a C x N matrix (unbiased std); a constant row becomes all zeros."""
    x = maxima.to(torch.float64)
    mean = x.mean(dim=1, keepdim=True)
    std = x.std(dim=1, keepdim=True) if x.shape[1] > 1 else torch.zeros_like(mean)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, (x - mean) / safe, torch.zeros_like(x))


def bin_edges(lo: float, hi: float, step: float = BIN_WIDTH, *, device=None) -> Tensor:
    """The official code's edges lo + k*step, k = 0..floor((hi - lo) / step), in float64."""
    n_bins = int((hi - lo) / step)
    return lo + torch.arange(n_bins + 1, dtype=torch.float64, device=device) * step


def histogram_entropy(values: Tensor, step: float = BIN_WIDTH) -> Tensor:
    """Entropy of each row of a C x N matrix over the layer-wide open bins described above."""
    values = values.to(torch.float64).contiguous()
    channels, n = values.shape
    edges = bin_edges(float(values.min()), float(values.max()), step, device=values.device)
    n_bins = len(edges) - 1
    if n_bins == 0:
        return torch.zeros(channels, dtype=torch.float64, device=values.device)
    # bucketize(right=False) gives i with edges[i-1] < v <= edges[i]; v is inside open bin i-1
    # when 1 <= i <= n_bins and v != edges[i].
    i = torch.bucketize(values, edges, right=False)
    inside = (i >= 1) & (i <= n_bins)
    inside &= values != edges[i.clamp(max=n_bins)]
    row = torch.arange(channels, device=values.device).unsqueeze(1).expand_as(i)
    keys = (row * n_bins + (i - 1))[inside]
    uniq, counts = torch.unique(keys, return_counts=True)
    p = counts.to(torch.float64) / n
    entropy = torch.zeros(channels, dtype=torch.float64, device=values.device)
    return entropy.index_add_(0, uniq // n_bins, -p * torch.log(p))


@METHODS.register("ep")
class EP(Method):
    """Entropy of pre-activation maxima over training-set samples (possibly poisoned); low = suspicious."""

    name = "ep"
    summary = "low entropy of per-sample pre-activation maxima; needs samples of the training set"
    data_role = "training"
    needs_maxima = True
    low_is_suspicious = True

    def score(self, ctx: ScoreContext) -> dict[str, Tensor]:
        assert ctx.stats is not None
        out = {}
        for layer, st in ctx.stats.items():
            if not st.maxima:
                ctx.notes.append(f"{layer}: never ran on the data; not scored")
                continue
            out[layer] = histogram_entropy(standardize(st.maxima_matrix().to(ctx.device)))
        return out
