"""Tests for bdprune.methods.clp: the data-free channel Lipschitz upper bound (UCLC)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _slow_reference import clp_reference, dataflow_pairs
from torch import nn

from bdprune.errors import BdpruneError
from bdprune.methods import METHODS, ScoreContext
from bdprune.methods.base import VARIANCE_FLOOR
from bdprune.methods.clp import CLP, channel_lipschitz

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def clp_scores(model, notes=None):
    return CLP().score(ScoreContext(model=model, stats=None, device=CPU, notes=[] if notes is None else notes))


def test_registered_with_its_documented_contract():
    cls = METHODS.get("clp")
    assert cls is CLP
    assert cls.data_role is None and not cls.needs_moments and not cls.needs_maxima
    assert not cls.low_is_suspicious and cls.pruned_params == ("weight", "bias")


def per_channel_loop(weight: torch.Tensor, gamma: torch.Tensor, var: torch.Tensor) -> list[float]:
    out = []
    for k in range(weight.shape[0]):
        w_k = weight[k].double().reshape(weight.shape[1], -1) if weight.dim() > 2 else weight[k].double().reshape(1, -1)
        out.append(float(torch.linalg.svdvals(w_k * abs(float(gamma[k]) / math.sqrt(float(var[k]))))[0]))
    return out


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (5, 3, 1, 1), (4, 2, 5, 1), (6, 4, 3), (7, 9)])
def test_channel_lipschitz_matches_a_per_channel_svd_loop(shape):
    g = torch.Generator().manual_seed(sum(shape))
    weight = torch.randn(shape, generator=g)
    gamma = torch.randn(shape[0], generator=g)  # negative gammas too: |gamma / sigma|
    var = 0.1 + torch.rand(shape[0], generator=g)
    got = channel_lipschitz(weight, gamma, var)
    assert got.dtype == torch.float64 and got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), per_channel_loop(weight, gamma, var), rtol=1e-6, atol=0)


def test_linear_uclc_is_the_row_norm_times_the_bn_scale():
    weight = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    got = channel_lipschitz(weight, torch.tensor([2.0, -0.5]), torch.tensor([4.0, 0.25]))
    assert got.tolist() == pytest.approx([5.0 * 2.0 / 2.0, 1.0 * 0.5 / 0.5], rel=1e-12)


def test_rank_one_kernel_has_its_closed_form_singular_value():
    # W_k = a b^T has exactly one non-zero singular value, |a| |b|.
    a, b = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([3.0, 0.0, 4.0, 0.0])  # |a| = 3, |b| = 5
    weight = torch.outer(a, b).reshape(1, 3, 2, 2)
    got = channel_lipschitz(weight, torch.tensor([1.0]), torch.tensor([9.0]))  # scale 1/3
    assert float(got[0]) == pytest.approx(5.0, rel=1e-12)


def test_scores_match_the_slow_reference(bn_model):
    pairs, unpaired = dataflow_pairs(bn_model, torch.rand(2, 1, 8, 8))
    assert pairs == {"bn1": "conv1", "bn2": "conv2", "bn3": "conv3", "bn4": "fc1"} and not unpaired
    scores = clp_scores(bn_model)
    reference = clp_reference(bn_model, pairs)
    assert set(scores) == set(reference)
    for name, ref in reference.items():
        np.testing.assert_allclose(scores[name].numpy(), ref, rtol=1e-6, atol=0)


def test_a_planted_high_gain_channel_scores_highest(bn_model):
    with torch.no_grad():
        bn_model.conv3.weight[11] *= 20.0
    scores = clp_scores(bn_model)["bn3"]
    assert int(scores.argmax()) == 11
    others = torch.cat([scores[:11], scores[12:]])
    assert float(scores[11]) > 5 * float(others.max())


def test_zero_running_var_is_floored_and_noted(bn_model):
    with torch.no_grad():
        bn_model.bn2.running_var[3] = 0.0
    notes: list[str] = []
    scores = clp_scores(bn_model, notes)
    assert torch.isfinite(scores["bn2"]).all()
    assert any(n.startswith("bn2:") and "running_var" in n for n in notes), notes
    floored = per_channel_loop(bn_model.conv2.weight[3:4].detach(), bn_model.bn2.weight[3:4].detach(), torch.tensor([VARIANCE_FLOOR]))
    assert float(scores["bn2"][3]) == pytest.approx(floored[0], rel=1e-6)


def test_bn_without_weight_uses_gamma_one():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3, affine=False)).eval()
    with torch.no_grad():
        model[1].running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    scores = clp_scores(model)["1"]
    expected = per_channel_loop(model[0].weight.detach(), torch.ones(3), model[1].running_var)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)


def test_no_conv_bn_pair_is_a_clear_error():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(BdpruneError, match="no BatchNorm fed directly by a conv"):
        clp_scores(model)


def test_unpaired_bns_are_noted_and_left_unscored():
    class PreAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn0 = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn1 = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn1(self.conv(torch.relu(self.bn0(x))))

    notes: list[str] = []
    scores = clp_scores(PreAct().eval(), notes)
    assert set(scores) == {"bn1"}
    assert any(n.startswith("bn0:") and "not scored by CLP" in n for n in notes), notes
