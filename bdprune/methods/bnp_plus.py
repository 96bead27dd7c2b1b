"""bnp+ (bdprune's own, beyond the paper): BNP's divergence ranked across the whole network,
pruned channels replaced by their clean mean, how many chosen from a clean-accuracy budget.

Scores are BNP's raw KL(N(mu_b, var_b) || N(mu_r, var_r)), unchanged, but ranked globally:
a clean model's clean statistics match its running ones in every layer, so an absolute
divergence is comparable across layers, while BNP's per-layer z-score gives every layer its
own 3-sigma tail whether or not it holds a backdoor neuron.

A pruned channel is not zeroed but held at its clean operating point: gamma = 0 and
beta = the mean of the channel's BN output on the clean samples,

    fill_k = gamma_k * (mu_b,k - mu_r,k) / sqrt(var_r,k + eps) + beta_k,

so clean inputs see (on average) the same value downstream and the trigger's response is gone.
``bdprune prune --method bnp+`` prunes the top-k channels for the largest k on a grid whose
accuracy on labelled clean data stays within ``--max-acc-drop`` (see bdprune.tune.choose_k).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stats import bn_layers
from .base import METHODS, ScoreContext
from .bnp import BNP, running_stats

# Points of clean accuracy (on the clean samples) ``prune --method bnp+`` may spend by default;
# tuned on the benchmark zoo's "tune" part (benchmarks/RESULTS.md, "bnp+").
DEFAULT_MAX_ACC_DROP = 1.0


def clean_output_mean(mu_b: Tensor, mu_r: Tensor, var_r: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """Mean of each channel's BN output (eval mode) over the clean samples: BN is affine per channel,
    so it maps the clean input mean ``mu_b`` to the output mean."""
    return gamma * (mu_b - mu_r) / torch.sqrt(var_r + eps) + beta


@METHODS.register("bnp+")
class BNPPlus(BNP):
    """BNP's KL ranked network-wide; pruned channels held at their clean mean output."""

    name = "bnp+"
    summary = "BNP's KL ranked network-wide, prune count from a clean-accuracy budget, channels held at their clean mean"
    ranking = "network"
    pruned_params = ("weight", "bias")

    def fill_values(self, ctx: ScoreContext) -> dict[str, Tensor]:
        """The bias each pruned channel gets (its clean mean output), per scored layer."""
        assert ctx.stats is not None
        out = {}
        for layer, bn in bn_layers(ctx.model):
            st = ctx.stats[layer]
            if st.count == 0 or bn.weight is None:
                continue
            mu_r, var_r = running_stats(bn, layer, ctx.device)
            gamma = bn.weight.detach().to(ctx.device, torch.float64)
            beta = bn.bias.detach().to(ctx.device, torch.float64)
            out[layer] = clean_output_mean(st.mean, mu_r, var_r, gamma, beta, bn.eps)
        return out
