"""What bdprune's statistics pass guarantees, as tolerances the tests share.

bdprune/stats.py centres each channel of a BN input on a per-channel shift (one sample's mean)
and sums the centred values and their squares in the input's dtype, a chunk at a time, adding the
chunk sums in float64. The rounding therefore scales with the spread of the values around the
mean, not with the mean itself:

- the mean is exact to ``tol * std`` of the channel: a relative bound on the mean fails for a
  channel whose mean happens to be near zero (tests/test_stats.py's bn3 channel 9, mean
  -0.0042 and std 0.49, came out 4.3e-9 off on one machine: 1.02e-6 of the mean but 9e-9 of
  the std), and is no bound at all for a mean of exactly zero;
- the variance is exact to ``tol * var`` (it is its own scale; a constant channel is exactly 0).

For float32 inputs tol = FLOAT32_STAT_TOL = 1e-6, about 8 times float32's machine epsilon.
Measured on conftest's model (batches of 9 to 128) with torch 2.13 and 2.14 and with ATen's
default, AVX2 and AVX512 kernels, the worst errors were 1.5e-7 (mean / std) and 6.9e-7
(var / var); every comparison in the suite stays within 0.21 of its bound. float64 inputs are summed in float64:
FLOAT64_STAT_TOL = 1e-9 leaves room for any batching (measured below 1e-13).

BNP's KL score inherits these bounds through its derivatives (``kl_atol``), so a score is
checked against what its statistics allow, not against its own size: a near-zero KL (a
channel whose clean statistics match its running ones) can be off by much more than 1e-6 of
itself while its statistics are exact to 1e-6 of their scale.
"""

from __future__ import annotations

import numpy as np
import torch
from _slow_reference import capture_bn_inputs
from torch import nn

FLOAT32_STAT_TOL = 1e-6
FLOAT64_STAT_TOL = 1e-9


def assert_moments_close(mean, var, values: np.ndarray, tol: float, *, err_msg: str = "") -> None:
    """``mean``/``var`` (per channel) against the exact float64 moments of ``values`` (C x M):
    mean within ``tol`` of each channel's std, unbiased variance within ``tol`` of itself."""
    values = np.asarray(values, dtype=np.float64)
    exact_mean = values.mean(axis=1)
    exact_var = values.var(axis=1, ddof=1)
    assert_within(mean, exact_mean, tol * np.sqrt(exact_var) + _tiny(exact_mean), err_msg=f"mean {err_msg}")
    np.testing.assert_allclose(_np(var), exact_var, rtol=tol, atol=0, err_msg=f"var {err_msg}")


def assert_within(actual, desired, atol, *, err_msg: str = "") -> None:
    """|actual - desired| <= atol elementwise, where ``atol`` may differ per element (numpy's
    assert_allclose takes one atol)."""
    actual, desired = _np(actual), _np(desired)
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), desired.shape)
    assert actual.shape == desired.shape, (actual.shape, desired.shape, err_msg)
    err = np.abs(actual - desired)
    bad = ~(err <= atol)  # NaN fails too
    if bad.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            i = int(np.argmax(np.where(bad, err / atol, -np.inf).ravel()))  # the worst offender
        raise AssertionError(
            f"{err_msg}: {int(bad.sum())} of {bad.size} differ beyond their tolerance; worst at flat index {i}: "
            f"{actual.ravel()[i]!r} vs {desired.ravel()[i]!r}, |diff| {err.ravel()[i]:.3g} > atol {atol.ravel()[i]:.3g}"
        )


def kl_atol(mu_b, var_b, mu_r, var_r, tol: float = FLOAT32_STAT_TOL) -> np.ndarray:
    """How far KL(N(mu_b, var_b) || N(mu_r, var_r)) can move when mu_b moves by ``tol * std_b``
    and var_b by ``tol * var_b`` (first order: |dKL/dmu_b| = |mu_b - mu_r| / var_r,
    |dKL/dvar_b| = |1/var_r - 1/var_b| / 2), plus float64 rounding of the formula itself."""
    mu_b, var_b, mu_r, var_r = (np.asarray(v, dtype=np.float64) for v in (mu_b, var_b, mu_r, var_r))
    from_mean = np.abs(mu_b - mu_r) / var_r * tol * np.sqrt(var_b)
    from_var = 0.5 * np.abs(var_b / var_r - 1.0) * tol
    return from_mean + from_var + 1e-12


def bnp_atol(model: nn.Module, images: torch.Tensor, batch_size: int | None = None, tol: float = FLOAT32_STAT_TOL) -> dict[str, np.ndarray]:
    """Per BN layer, ``kl_atol`` for each channel's BNP score on ``images`` (as bnp_reference)."""
    modules = dict(model.named_modules())
    out = {}
    for name, x in capture_bn_inputs(model, images, batch_size).items():
        per_channel = x.swapaxes(0, 1).reshape(x.shape[1], -1)
        bn = modules[name]
        out[name] = kl_atol(
            per_channel.mean(axis=1),
            per_channel.var(axis=1, ddof=1),
            bn.running_mean.double().numpy(),
            bn.running_var.double().numpy(),
            tol,
        )
    return out


def _np(a) -> np.ndarray:
    return a.double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)


def _tiny(exact_mean: np.ndarray) -> np.ndarray:
    """float64 rounding of the reference mean itself, for a constant channel (std 0)."""
    return 1e-15 * (1.0 + np.abs(exact_mean))
