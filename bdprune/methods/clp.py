"""CLP (Zheng et al., ECCV 2022): upper bound of each channel's Lipschitz constant, data-free.

For a conv feeding a BN, channel k: W_k = conv.weight[k] reshaped to (C_in, kh*kw), scaled by
|gamma_k / sigma_k| with sigma_k = sqrt(running_var_k) (no eps, as the official code; a zero
running_var is floored, see VARIANCE_FLOOR). UCLC_k = largest singular value of that matrix; for
a Linear feeding a BatchNorm1d the matrix is one row, so UCLC_k = ||w_k|| * |gamma_k / sigma_k|.
High UCLC is suspicious; pruning zeroes gamma and beta.

All channels of a layer are done at once, in float64. The largest singular value of an m x n
matrix A is the square root of the largest eigenvalue of its Gram matrix (A^T A, n x n, or
A A^T when m < n): for a 3x3 conv that is a 9 x 9 symmetric matrix per channel, whose batched
``eigvalsh`` is about twice as fast as ``svdvals`` on the C_in x 9 matrices and equal to it
within float64 rounding (1e-15 relative on resnet18/50, benchmarks/RESULTS.md). A matrix with
one row or one column (1x1 convs, Linear) needs no decomposition: its norm is its singular value.
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
    w = weight.detach().to(torch.float64)
    # Linear: one row per output feature
    m = w.unsqueeze(1) if w.dim() == 2 else w.reshape(w.shape[0], w.shape[1], -1)
    if min(m.shape[1], m.shape[2]) == 1:
        top = m.flatten(1).norm(dim=1)
    else:
        gram = m.transpose(1, 2) @ m if m.shape[1] >= m.shape[2] else m @ m.transpose(1, 2)
        top = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0).sqrt()
    scale = (gamma.to(torch.float64) / running_var.to(torch.float64).sqrt()).abs()
    return top * scale


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
