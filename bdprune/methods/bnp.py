"""BNP (Zheng et al., NeurIPS 2022): KL divergence of clean BN-input statistics from the running ones.

score_k = KL(N(mu_b, var_b) || N(mu_r, var_r))
        = log(sigma_r / sigma_b) + (var_b + (mu_b - mu_r)^2) / (2 var_r) - 1/2

mu_b, var_b: mean and unbiased variance of channel k's BN input over clean samples and positions;
mu_r, var_r: the checkpoint's running_mean and running_var. High divergence is suspicious.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import BdpruneError
from ..stats import bn_layers
from .base import METHODS, Method, ScoreContext, floor_variance


def gaussian_kl(mu_b: Tensor, var_b: Tensor, mu_r: Tensor, var_r: Tensor) -> Tensor:
    """KL(N(mu_b, var_b) || N(mu_r, var_r)) elementwise, as the paper writes it."""
    return 0.5 * torch.log(var_r / var_b) + (var_b + (mu_b - mu_r) ** 2) / (2 * var_r) - 0.5


def running_stats(bn: torch.nn.Module, layer: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """The layer's running mean and variance in float64, refusing missing or non-finite ones."""
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    if mean is None or var is None:
        raise BdpruneError(
            f"BatchNorm {layer} keeps no running statistics (track_running_stats=False)",
            hint="BNP and CLP need running_mean/running_var; use a checkpoint trained with tracked BN statistics",
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
        raise BdpruneError(
            f"BatchNorm {layer} has NaN or infinite running statistics",
            hint="the checkpoint is damaged; re-export it from a healthy training run",
        )
    return mean.to(device, torch.float64), var.to(device, torch.float64)


@METHODS.register("bnp")
class BNP(Method):
    """BN-statistics KL divergence on clean samples (needs --data with a few hundred clean images)."""

    name = "bnp"
    summary = "KL(clean BN-input stats || running stats); needs a few hundred clean samples"
    data_role = "clean"
    needs_moments = True

    def score(self, ctx: ScoreContext) -> dict[str, Tensor]:
        assert ctx.stats is not None
        out = {}
        for layer, bn in bn_layers(ctx.model):
            st = ctx.stats[layer]
            if st.count == 0:
                ctx.notes.append(f"{layer}: never ran on the data; not scored")
                continue
            mu_r, var_r = running_stats(bn, layer, ctx.device)
            var_b = floor_variance(st.var, layer, "the clean variance", ctx.notes)
            var_r = floor_variance(var_r, layer, "running_var", ctx.notes)
            out[layer] = gaussian_kl(st.mean, var_b, mu_r, var_r)
        return out
