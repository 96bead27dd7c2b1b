"""CLP (Zheng et al., ECCV 2022): upper bound of each channel's Lipschitz constant, data-free.

For a conv feeding a BN, channel k: W_k = conv.weight[k] reshaped to (C_in, kh*kw), scaled by
|gamma_k / sigma_k| with sigma_k = sqrt(running_var_k) (no eps, as the official code; a zero
running_var is floored, see VARIANCE_FLOOR). UCLC_k = largest singular value of that matrix; for
a Linear feeding a BatchNorm1d the matrix is one row, so UCLC_k = ||w_k|| * |gamma_k / sigma_k|.
High UCLC is suspicious; pruning zeroes gamma and beta. All channels' SVDs run as one batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import BdpruneError
from ..pairing import pair_conv_bn
from .base import METHODS, Method, ScoreContext, floor_variance
from .bnp import running_stats


def channel_lipschitz(weight: Tensor, gamma: Tensor, running_var: Tensor) -> Tensor:
    """UCLC per output channel of ``weight`` (C_out x ...) followed by BN(gamma, running_var)."""
    w = weight.to(torch.float64)
    if w.dim() == 2:  # Linear: one row per output feature
        matrices = w.unsqueeze(1)
    else:
        matrices = w.reshape(w.shape[0], w.shape[1], -1)
    scale = (gamma.to(torch.float64) / running_var.to(torch.float64).sqrt()).abs()
    return torch.linalg.svdvals(matrices)[:, 0] * scale


@METHODS.register("clp")
class CLP(Method):
    """Channel Lipschitzness upper bound from weights alone (no data)."""

    name = "clp"
    summary = "channel Lipschitz upper bound from conv/linear weights and BN scale; data-free"
    data_role = None
    pruned_params = ("weight", "bias")

    def score(self, ctx: ScoreContext) -> dict[str, Tensor]:
        pairing = pair_conv_bn(ctx.model)
        for bn_name, reason in pairing.unpaired.items():
            ctx.notes.append(f"{bn_name}: not scored by CLP, no conv feeds it ({reason})")
        if not pairing.pairs:
            raise BdpruneError(
                "CLP found no BatchNorm fed directly by a conv or linear layer",
                hint="CLP needs conv->BN pairs; use --method bnp or ep with --data",
            )
        modules = dict(ctx.model.named_modules())
        out = {}
        for bn_name, conv_name in pairing.pairs.items():
            bn, conv = modules[bn_name], modules[conv_name]
            _, var_r = running_stats(bn, bn_name, ctx.device)
            gamma = bn.weight if bn.weight is not None else torch.ones_like(var_r)
            var_r = floor_variance(var_r, bn_name, "running_var", ctx.notes)
            out[bn_name] = channel_lipschitz(conv.weight.detach().to(ctx.device), gamma.detach().to(ctx.device), var_r)
        return out
