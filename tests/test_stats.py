"""Tests for bdprune.stats: the streaming statistics pass over BN inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _slow_reference import capture_bn_inputs
from _tolerances import FLOAT32_STAT_TOL, FLOAT64_STAT_TOL, assert_moments_close, assert_within
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bdprune.errors import BdpruneError
from bdprune.stats import LayerStats, bn_layers, collect_stats, moment_sums

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def rel_close(a, b, rtol: float) -> None:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0)


def test_seven_batches_equal_one_big_batch(make_bn_model):
    # float64 so the model's BN inputs themselves cannot depend on how the data is batched:
    # any difference left is the accumulation's.
    model = make_bn_model(seed=3).double()
    images = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    batch_size = 15  # 6 full batches of 15 and a last one of 10
    assert math.ceil(len(images) / batch_size) == 7
    streamed = collect_stats(model, images, device=CPU, batch_size=batch_size, maxima=True, show_progress=False)
    whole = collect_stats(model, images, device=CPU, batch_size=len(images), maxima=True, show_progress=False)
    assert set(streamed) == set(whole) == {"bn1", "bn2", "bn3", "bn4"}
    for name in whole:
        s, w = streamed[name], whole[name]
        assert len(s.maxima) == 7 and len(w.maxima) == 1
        assert s.count == w.count
        # sums and means on the channel's scale (its std; times count for a sum), which a
        # near-zero mean does not have; sumsq and var are their own scale
        std = w.var.sqrt().numpy()
        assert_within(s.mean, w.mean, FLOAT64_STAT_TOL * std, err_msg=name)
        assert_within(s.sum, w.sum, FLOAT64_STAT_TOL * std * w.count, err_msg=name)
        for attr in ("sumsq", "var"):
            rel_close(getattr(s, attr), getattr(w, attr), FLOAT64_STAT_TOL)
        assert torch.equal(s.maxima_matrix(), w.maxima_matrix())


def test_stats_match_direct_numpy_over_all_values(bn_model, clean_images):
    stats = collect_stats(bn_model, clean_images, device=CPU, batch_size=9, maxima=True, show_progress=False)
    inputs = capture_bn_inputs(bn_model, clean_images, batch_size=9)
    for name, x in inputs.items():
        st_ = stats[name]
        n, c = x.shape[:2]
        per_channel = x.swapaxes(0, 1).reshape(c, -1)
        assert st_.channels == c
        assert st_.count == per_channel.shape[1] == n * int(np.prod(x.shape[2:], dtype=int))
        # float32 activations are summed in float32 chunks (float64 across chunks): the mean to
        # 1e-6 of each channel's std, the unbiased variance (as documented) to 1e-6 of itself.
        # Several channels here have means near zero (bn3's channel 9: -0.0042, std 0.49).
        assert_moments_close(st_.mean, st_.var, per_channel, FLOAT32_STAT_TOL, err_msg=name)
        expected_max = per_channel.reshape(c, n, -1).max(axis=2) if x.ndim > 2 else x.T
        assert st_.maxima_matrix().shape == (c, n)
        np.testing.assert_array_equal(st_.maxima_matrix().numpy().astype(np.float64), expected_max)


def test_count_is_samples_times_positions_and_bn1d_maxima_are_the_values(bn_model, clean_images):
    stats = collect_stats(bn_model, clean_images, device=CPU, maxima=True, show_progress=False)
    n = len(clean_images)
    assert stats["bn1"].count == n * 8 * 8
    assert stats["bn2"].count == n * 8 * 8
    assert stats["bn3"].count == n * 4 * 4  # after the 2x2 max-pool
    assert stats["bn4"].count == n  # BatchNorm1d: one value per sample
    fc1_out = capture_bn_inputs(bn_model, clean_images)["bn4"]
    np.testing.assert_array_equal(stats["bn4"].maxima_matrix().numpy(), fc1_out.T.astype(np.float32))


def identity_bn(channels: int) -> nn.Module:
    """A model that is one BatchNorm: its input is exactly the images."""
    return nn.Sequential(nn.BatchNorm2d(channels)).eval()


def identity_bn64(channels: int) -> nn.Module:
    return identity_bn(channels).double()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), batch_size=st.integers(1, 45), seed=st.integers(0, 2**16))
def test_any_batching_gives_the_statistics_of_the_whole(n, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    images = 3.0 + 2.0 * torch.randn(n, 2, 3, 3, generator=g, dtype=torch.float64)  # mean far from 0
    stats = collect_stats(identity_bn64(2), images, device=CPU, batch_size=batch_size, maxima=True, show_progress=False)
    [(name, layer)] = stats.items()
    per_channel = images.numpy().swapaxes(0, 1).reshape(2, -1)
    assert layer.count == n * 9
    assert_moments_close(layer.mean, layer.var, per_channel, FLOAT64_STAT_TOL)
    np.testing.assert_array_equal(layer.maxima_matrix().numpy(), images.amax(dim=(2, 3)).float().T.numpy())
    assert len(layer.maxima) == math.ceil(n / batch_size)


def test_float32_variance_survives_a_mean_far_larger_than_the_spread():
    # sum(x^2) - sum(x)^2/n in float32 would lose every digit here (mean^2/var = 1e8); the
    # centring in moment_sums keeps the float32 variance as precise as the data.
    g = torch.Generator().manual_seed(0)
    images = (1e4 + torch.randn(64, 3, 8, 8, generator=g, dtype=torch.float64)).float()
    [layer] = collect_stats(identity_bn(3), images, device=CPU, batch_size=16, show_progress=False).values()
    per_channel = images.double().numpy().swapaxes(0, 1).reshape(3, -1)
    assert_moments_close(layer.mean, layer.var, per_channel, FLOAT32_STAT_TOL)


def test_normalize_is_applied_before_the_model():
    images = torch.rand(20, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    stats = collect_stats(identity_bn(3), images, device=CPU, normalize=(mean, std), show_progress=False)
    expected = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    per_channel = expected.double().numpy().swapaxes(0, 1).reshape(3, -1)
    assert_moments_close(stats["0"].mean, stats["0"].var, per_channel, FLOAT32_STAT_TOL)


def test_moments_and_maxima_are_only_collected_on_request(bn_model, clean_images):
    only_moments = collect_stats(bn_model, clean_images, device=CPU, show_progress=False)
    assert all(s.sum is not None and s.maxima == [] for s in only_moments.values())
    only_maxima = collect_stats(bn_model, clean_images, device=CPU, moments=False, maxima=True, show_progress=False)
    assert all(s.sum is None and s.count == 0 and len(s.maxima) == 1 for s in only_maxima.values())


def test_eval_mode_leaves_running_stats_alone_and_hooks_are_removed(bn_model, clean_images):
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    bn_model.train()
    collect_stats(bn_model, clean_images, device=CPU, show_progress=False)
    assert not bn_model.training
    for key, value in bn_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    for _, bn in bn_layers(bn_model):
        assert len(bn._forward_pre_hooks) == 0


def test_hooks_are_removed_when_the_data_does_not_fit(bn_model):
    with pytest.raises(BdpruneError, match="do not fit the model"):
        collect_stats(bn_model, torch.rand(4, 3, 8, 8), device=CPU, show_progress=False)
    for _, bn in bn_layers(bn_model):
        assert len(bn._forward_pre_hooks) == 0


def test_bn_layers_lists_every_batchnorm_in_registration_order(bn_model):
    assert [name for name, _ in bn_layers(bn_model)] == ["bn1", "bn2", "bn3", "bn4"]


def test_layer_stats_variance_of_a_constant_channel_is_zero_not_negative():
    # sumsq - sum^2/n can round below zero for a constant channel; var must clamp it.
    value = torch.tensor([0.1], dtype=torch.float64)
    layer = LayerStats(channels=1, count=1000, sum=value * 1000, sumsq=value * value * 1000)
    assert float(layer.var) >= 0.0
    assert float(layer.var) < 1e-15


def test_half_precision_inputs_are_summed_in_float32():
    # float16 sums would round at 1e-3; the half values themselves are the reference.
    x = (3.0 + 0.1 * torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))).half()
    total, total_sq = moment_sums(x)
    exact = x.double()
    rel_close(total, exact.sum((0, 2, 3)), 1e-6)
    rel_close(total_sq, (exact * exact).sum((0, 2, 3)), 1e-6)
