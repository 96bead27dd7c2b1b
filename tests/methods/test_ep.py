"""Tests for bdprune.methods.ep: entropy of standardized pre-activation maxima (low = suspicious)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _slow_reference import capture_bn_inputs, ep_reference, spatial_maxima
from _slow_reference import histogram_entropy as reference_entropy
from _slow_reference import standardize as reference_standardize
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bdprune.methods import METHODS, ScoreContext
from bdprune.methods.ep import BIN_WIDTH, EP, bin_edges, histogram_entropy, standardize
from bdprune.stats import collect_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def ep_scores(model, images, batch_size=128, notes=None):
    stats = collect_stats(model, images, device=CPU, batch_size=batch_size, moments=False, maxima=True, show_progress=False)
    return EP().score(ScoreContext(model=model, stats=stats, device=CPU, notes=[] if notes is None else notes))


def test_registered_with_its_documented_contract():
    cls = METHODS.get("ep")
    assert cls is EP
    assert cls.data_role == "training" and cls.needs_maxima and not cls.needs_moments
    assert cls.low_is_suspicious and cls.pruned_params == ("weight",)
    assert BIN_WIDTH == 0.01


def test_histogram_entropy_matches_the_per_bin_loop_on_a_layer():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(12, 300, generator=g, dtype=torch.float64)
    values[3] = values[3] * 0.05  # a squeezed channel: few bins, low entropy
    values[7, :10] += 8.0  # a few far-out samples stretch the layer's range
    got = histogram_entropy(values).numpy()
    ref = reference_entropy(values.numpy())
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
    assert int(np.argmin(ref)) == 3


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 6),
    n=st.integers(1, 60),
    scale=st.floats(0.001, 3.0),
    seed=st.integers(0, 2**16),
)
def test_histogram_entropy_matches_the_loop_on_random_layers(channels, n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    values = scale * torch.randn(channels, n, generator=g, dtype=torch.float64)
    got = histogram_entropy(values).numpy()
    np.testing.assert_allclose(got, reference_entropy(values.numpy()), rtol=1e-6, atol=1e-12)


def test_values_on_bin_edges_are_dropped_as_in_the_official_code():
    lo, hi = -0.5, -0.395  # n_bins = int(0.105 / 0.01) = 10
    edges = bin_edges(lo, hi).numpy()  # the exact float64 edges lo + k*0.01, k = 0..10
    assert len(edges) == 11
    np.testing.assert_array_equal(edges, [lo + k * 0.01 for k in range(11)])
    inside = [lo + 0.005, lo + 0.015, lo + 0.025, lo + 0.035]  # one value in each of bins 0..3
    on_edges = [float(edges[2]), float(edges[5]), float(edges[10])]
    row = np.array([lo] + inside + on_edges + [hi])  # the minimum is an edge; hi is past the last edge
    n = len(row)
    expected = -4 * (1 / n) * math.log(1 / n)  # only the 4 interior values count; p sums to 4/9
    got = float(histogram_entropy(torch.tensor(row).unsqueeze(0))[0])
    assert got == pytest.approx(expected, rel=1e-12)
    assert float(reference_entropy(row[None])[0]) == pytest.approx(expected, rel=1e-12)


def test_bins_start_at_the_layer_minimum_not_the_channel_minimum():
    # Channel 1 alone would start its bins at its own minimum; the layer's bins start at -1.0.
    values = torch.tensor([[-1.0, 0.0, 1.0, 0.5], [0.004, 0.006, 0.0061, 0.3]], dtype=torch.float64)
    got = histogram_entropy(values).numpy()
    np.testing.assert_allclose(got, reference_entropy(values.numpy()), rtol=1e-12)
    # From -1.0 the edges fall at ..., 0.0, 0.01, ...: 0.004, 0.006 and 0.0061 share the bin
    # (0.0, 0.01), so channel 1 has p = 3/4 and 1/4. Bins from its own minimum 0.004 would drop
    # that value (it lies on the first edge) and give p = 2/4, 1/4.
    p = np.array([0.75, 0.25])
    assert got[1] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-9)


def test_single_value_range_has_no_bins_and_zero_entropy():
    assert histogram_entropy(torch.zeros(3, 5, dtype=torch.float64)).tolist() == [0.0, 0.0, 0.0]


def test_standardize_is_per_channel_unbiased_and_defines_dead_channels():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    z = standardize(x)
    assert z.dtype == torch.float64
    row = np.array([1.0, 2.0, 3.0, 6.0])
    # z is in units of the std (scale 1): a floor of 1e-12 where z is near zero (the value 3.0)
    np.testing.assert_allclose(z[0].numpy(), (row - row.mean()) / row.std(ddof=1), rtol=1e-12, atol=1e-12)
    assert z[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # dead channel: zeros, not NaN
    np.testing.assert_allclose(z.numpy(), reference_standardize(x.numpy()), rtol=1e-12, atol=1e-12)
    assert standardize(torch.tensor([[4.0]])).tolist() == [[0.0]]  # one sample


def test_scores_match_the_slow_reference(bn_model, clean_images):
    scores = ep_scores(bn_model, clean_images, batch_size=10)
    reference = ep_reference(bn_model, clean_images, batch_size=10)
    assert set(scores) == set(reference) == {"bn1", "bn2", "bn3", "bn4"}
    for name, ref in reference.items():
        assert scores[name].dtype == torch.float64
        np.testing.assert_allclose(scores[name].numpy(), ref, rtol=1e-6, atol=0)
        assert (ref > 0).all()


def test_batchnorm1d_maxima_are_the_values_themselves(bn_model, clean_images):
    stats = collect_stats(bn_model, clean_images, device=CPU, moments=False, maxima=True, show_progress=False)
    fc1 = capture_bn_inputs(bn_model, clean_images)["bn4"]  # N x 32
    np.testing.assert_array_equal(stats["bn4"].maxima_matrix().numpy(), spatial_maxima(fc1).astype(np.float32))


def test_a_channel_squeezed_by_outliers_has_the_lowest_entropy():
    # A backdoor neuron: most samples sit together, a few (triggered) go far out.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g)
    x[:20, 5] += 40.0
    model = nn.Sequential(nn.BatchNorm1d(8)).eval()
    scores = ep_scores(model, x)["0"]
    assert int(scores.argmin()) == 5
    np.testing.assert_allclose(scores.numpy(), reference_entropy(reference_standardize(x.double().numpy().T)), rtol=1e-6)


def test_dead_channel_scores_finite():
    model = nn.Sequential(nn.BatchNorm1d(3)).eval()
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    x[:, 0] = 1.5
    scores = ep_scores(model, x)["0"]
    assert torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), reference_entropy(reference_standardize(x.double().numpy().T)), rtol=1e-6)
