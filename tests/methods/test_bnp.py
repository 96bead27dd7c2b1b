"""Tests for bdprune.methods.bnp: KL of clean BN-input statistics from the running ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _slow_reference import bnp_reference, gaussian_kl as reference_kl
from _tolerances import assert_within, bnp_atol
from torch import nn

from bdprune.errors import BdpruneError
from bdprune.methods import METHODS, ScoreContext
from bdprune.methods.base import VARIANCE_FLOOR
from bdprune.methods.bnp import BNP, gaussian_kl
from bdprune.stats import collect_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def bnp_scores(model, images, batch_size=128, notes=None):
    stats = collect_stats(model, images, device=CPU, batch_size=batch_size, moments=True, show_progress=False)
    ctx = ScoreContext(model=model, stats=stats, device=CPU, notes=[] if notes is None else notes)
    return BNP().score(ctx)


def test_registered_with_its_documented_contract():
    cls = METHODS.get("bnp")
    assert cls is BNP
    assert cls.data_role == "clean" and cls.needs_moments and not cls.needs_maxima
    assert not cls.low_is_suspicious and cls.pruned_params == ("weight",)


@pytest.mark.parametrize(
    ("mu_b", "var_b", "mu_r", "var_r", "expected"),
    [
        (0.0, 1.0, 0.0, 1.0, 0.0),
        (1.0, 1.0, 0.0, 1.0, 0.5),  # (mu_b - mu_r)^2 / (2 var_r)
        (0.0, 4.0, 0.0, 1.0, 1.5 - math.log(2.0)),  # log(1/2) + 4/2 - 1/2; log(var_r/var_b) would give 0.114
        (2.0, 1.0, 0.0, 4.0, math.log(2.0) + 5.0 / 8.0 - 0.5),
    ],
)
def test_gaussian_kl_hand_computed(mu_b, var_b, mu_r, var_r, expected):
    got = gaussian_kl(*(torch.tensor([v], dtype=torch.float64) for v in (mu_b, var_b, mu_r, var_r)))
    assert float(got) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert reference_kl(mu_b, var_b, mu_r, var_r) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_scores_match_the_slow_reference(bn_model, clean_images):
    scores = bnp_scores(bn_model, clean_images, batch_size=16)
    reference = bnp_reference(bn_model, clean_images, batch_size=16)
    atol = bnp_atol(bn_model, clean_images, batch_size=16)
    assert set(scores) == set(reference) == {"bn1", "bn2", "bn3", "bn4"}
    for name, ref in reference.items():
        assert scores[name].dtype == torch.float64 and scores[name].shape == (len(ref),)
        # float32 BN inputs are summed in float32 chunks: each KL agrees as far as its clean
        # mean (1e-6 of the std) and variance (1e-6 relative) carry through the formula
        assert_within(scores[name], ref, atol[name], err_msg=name)
        assert (ref > 0).all()  # the check is not vacuous: clean data differ from the running stats


def test_scores_do_not_depend_on_batching(make_bn_model, clean_images):
    model = make_bn_model(seed=2).double()
    images = clean_images.double()
    a = bnp_scores(model, images, batch_size=7)
    b = bnp_scores(model, images, batch_size=len(images))
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), rtol=1e-9, atol=0)


def test_uses_the_unbiased_variance():
    # One BatchNorm1d over 5 samples: the estimator (n-1 vs n) changes var_b by 25 %.
    bn = nn.BatchNorm1d(2).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    model = nn.Sequential(bn)
    x = torch.tensor([[0.0, 1.0], [1.0, -2.0], [2.0, 0.5], [0.5, 0.0], [3.0, -1.0]])
    scores = bnp_scores(model, x)["0"].numpy()
    expected = []
    for c in range(2):
        v = x[:, c].double().numpy()
        expected.append(reference_kl(v.mean(), v.var(ddof=1), float(bn.running_mean[c]), float(bn.running_var[c])))
    biased = reference_kl(x[:, 0].double().mean().item(), x[:, 0].double().var(unbiased=False).item(), 0.5, 2.0)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert abs(scores[0] - biased) > 1e-3


def test_the_divergent_channel_scores_highest():
    # Running stats that agree with the data in every channel but one.
    torch.manual_seed(0)
    x = torch.randn(400, 6)
    bn = nn.BatchNorm1d(6).eval()
    with torch.no_grad():
        bn.running_mean.copy_(x.mean(0))
        bn.running_var.copy_(x.var(0))
        bn.running_mean[4] += 3.0  # training data drove channel 4 somewhere the clean data never go
    scores = bnp_scores(nn.Sequential(bn), x)["0"]
    assert int(scores.argmax()) == 4
    assert float(scores[4]) == pytest.approx(9.0 / (2 * float(bn.running_var[4])), rel=1e-5)  # 3^2 / (2 var_r)
    assert float(scores.max()) > 100 * float(torch.cat([scores[:4], scores[5:]]).max())


def test_constant_channel_is_floored_and_noted():
    model = nn.Sequential(nn.BatchNorm1d(3)).eval()
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    x[:, 1] = 0.25
    notes: list[str] = []
    scores = bnp_scores(model, x, notes=notes)["0"]
    assert torch.isfinite(scores).all()
    assert any("0:" in n and "clean variance" in n and "(1)" in n for n in notes), notes
    expected = reference_kl(0.25, VARIANCE_FLOOR, 0.0, 1.0)
    assert float(scores[1]) == pytest.approx(expected, rel=1e-6)


def test_bn_without_running_stats_is_refused():
    model = nn.Sequential(nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(BdpruneError, match="running statistics"):
        bnp_scores(model, torch.rand(4, 2, 3, 3))


def test_non_finite_running_stats_are_refused():
    model = nn.Sequential(nn.BatchNorm2d(2)).eval()
    with torch.no_grad():
        model[0].running_var[1] = float("nan")
    with pytest.raises(BdpruneError, match="NaN or infinite"):
        bnp_scores(model, torch.rand(4, 2, 3, 3))


def test_unused_bn_is_noted_not_scored():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.BatchNorm2d(2)
            self.unused = nn.BatchNorm2d(2)

        def forward(self, x):
            return self.used(x)

    notes: list[str] = []
    scores = bnp_scores(Skips().eval(), torch.rand(4, 2, 3, 3), notes=notes)
    assert set(scores) == {"used"}
    assert any(n.startswith("unused:") for n in notes)
