"""Slow, obvious reference implementations of what bdprune computes, written straight from
/work/shared/METHODS.md with loops instead of vectorization. Tests compare bdprune against them.

None of this imports bdprune: the references see only the model, the data and the formulas.
(Import with ``from _slow_reference import ...``; pytest puts ``tests/`` on ``sys.path`` because
``tests/conftest.py`` lives there.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BIN_WIDTH = 0.01
FEEDERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def bn_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def capture_bn_inputs(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Every BN layer's full input over ``images`` (eval mode), as float64 numpy arrays N x C x ...

    ``batch_size`` None runs one batch; give the batch size the code under test used when the
    comparison must be bit-exact on float32 models.
    """
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in bn_names(model)}
    modules = dict(model.named_modules())

    def hook_for(name):
        def hook(_module, inputs):
            captured[name].append(inputs[0].detach().clone())

        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in captured]
    model.eval()
    step = batch_size or len(images)
    try:
        with torch.no_grad():
            for start in range(0, len(images), step):
                model(images[start : start + step])
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(parts).numpy().astype(np.float64) for name, parts in captured.items() if parts}


# --- BNP --------------------------------------------------------------------------------------

def gaussian_kl(mu_b: float, var_b: float, mu_r: float, var_r: float) -> float:
    """KL(N(mu_b, var_b) || N(mu_r, var_r)) exactly as METHODS.md writes it."""
    return math.log(math.sqrt(var_r) / math.sqrt(var_b)) + (var_b + (mu_b - mu_r) ** 2) / (2 * var_r) - 0.5


def bnp_reference(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Per channel: mean and unbiased variance of every BN-input value (samples x positions),
    then the Gaussian KL against the layer's running statistics. One channel at a time."""
    modules = dict(model.named_modules())
    out = {}
    for name, x in capture_bn_inputs(model, images, batch_size).items():
        bn = modules[name]
        scores = []
        for c in range(x.shape[1]):
            values = x[:, c].ravel()
            n = values.size
            mu_b = float(np.sum(values)) / n
            var_b = float(np.sum((values - mu_b) ** 2)) / (n - 1)
            mu_r = float(bn.running_mean[c])
            var_r = float(bn.running_var[c])
            scores.append(gaussian_kl(mu_b, var_b, mu_r, var_r))
        out[name] = np.array(scores)
    return out


# --- EP ---------------------------------------------------------------------------------------

def spatial_maxima(x: np.ndarray) -> np.ndarray:
    """N x C x ... -> C x N: per sample and channel the maximum over positions (1-d: the value)."""
    n, c = x.shape[:2]
    if x.ndim == 2:
        return x.T.copy()
    out = np.empty((c, n))
    for i in range(n):
        for k in range(c):
            out[k, i] = x[i, k].max()
    return out


def standardize(maxima: np.ndarray) -> np.ndarray:
    """Each row to mean 0, unbiased std 1; a constant row becomes all zeros."""
    out = np.zeros_like(maxima, dtype=np.float64)
    for k in range(maxima.shape[0]):
        row = maxima[k].astype(np.float64)
        std = row.std(ddof=1) if row.size > 1 else 0.0
        if std > 0:
            out[k] = (row - row.mean()) / std
    return out


def histogram_entropy(values: np.ndarray, step: float = BIN_WIDTH) -> np.ndarray:
    """The official per-bin loop: bins start at the layer minimum, n_bins = int((max - min) / step),
    bin k is the OPEN interval (lo + k*step, lo + (k+1)*step), p = count / N, H = -sum p log p."""
    values = np.asarray(values, dtype=np.float64)
    channels, n = values.shape
    lo, hi = float(values.min()), float(values.max())
    n_bins = int((hi - lo) / step)
    entropy = np.zeros(channels)
    for k in range(n_bins):
        inside = (values > lo + k * step) & (values < lo + (k + 1) * step)
        p = inside.sum(axis=1) / n
        for c in range(channels):
            if p[c] > 0:
                entropy[c] -= p[c] * math.log(p[c])
    return entropy


def ep_reference(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Per layer: spatial maxima (C x N), standardized per channel, entropy by the per-bin loop."""
    return {
        name: histogram_entropy(standardize(spatial_maxima(x)))
        for name, x in capture_bn_inputs(model, images, batch_size).items()
    }


# --- CLP --------------------------------------------------------------------------------------

def dataflow_pairs(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, str], set[str]]:
    """Ground truth by running the model: ``pairs`` maps each BN called exactly once whose input
    tensor IS the output tensor of a conv/linear module to that module; every other BN (fed by
    anything else, called twice, never called) is in ``unpaired``. Test models must not use
    in-place ops between a conv and a BN (the tensor object would be the same)."""
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # keeps outputs alive so their ids cannot be reused
    calls: dict[str, list[str | None]] = {name: [] for name in bn_names(model)}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, FEEDERS):

            def after(_m, _inp, out, name=name):
                produced[id(out)] = name
                keep.append(out)

            handles.append(module.register_forward_hook(after))
        elif isinstance(module, _BatchNorm):

            def before(_m, inputs, name=name):
                calls[name].append(produced.get(id(inputs[0])))

            handles.append(module.register_forward_pre_hook(before))
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    pairs = {bn: feeders[0] for bn, feeders in calls.items() if len(feeders) == 1 and feeders[0] is not None}
    return pairs, set(calls) - set(pairs)


def clp_reference(model: nn.Module, pairs: dict[str, str]) -> dict[str, np.ndarray]:
    """Per channel k: W_k (C_in x kh*kw, or one row for Linear) times |gamma_k / sqrt(var_k)|,
    UCLC_k = its largest singular value, one torch.linalg.svdvals call per channel."""
    modules = dict(model.named_modules())
    out = {}
    for bn_name, conv_name in pairs.items():
        bn, conv = modules[bn_name], modules[conv_name]
        weight = conv.weight.detach().to(torch.float64)
        scores = []
        for k in range(weight.shape[0]):
            w_k = weight[k].reshape(weight.shape[1], -1) if weight.dim() > 2 else weight[k].reshape(1, -1)
            scale = abs(float(bn.weight[k].detach()) / math.sqrt(float(bn.running_var[k])))
            scores.append(float(torch.linalg.svdvals(w_k * scale)[0]))
        out[bn_name] = np.array(scores)
    return out
