"""Tests for bdprune.scoring: per-layer thresholds, z-scores, ranking and the JSON-ready dict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bdprune.scoring import SCHEMA_VERSION, ScanResult, flag, flag_layer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_flag_layer_hand_computed_example():
    # mean = 22; deviations -21 -20 -19 -18 78; sum of squares 7610; unbiased var = 7610 / 4
    scores = [1.0, 2.0, 3.0, 4.0, 100.0]
    std = math.sqrt(7610 / 4)  # 43.617...
    layer = flag_layer("bn", t(scores), 1.0, low_is_suspicious=False)
    assert layer.name == "bn"
    assert layer.mean == pytest.approx(22.0, rel=1e-12)
    assert layer.std == pytest.approx(std, rel=1e-12)
    assert layer.threshold == pytest.approx(22.0 + std, rel=1e-12)  # 65.6
    assert layer.flagged == [4]
    assert layer.scores == scores
    assert layer.z == pytest.approx([(s - 22.0) / std for s in scores], rel=1e-12)
    # z of the outlier is 1.788: u = 2 flags nothing
    assert flag_layer("bn", t(scores), 2.0, low_is_suspicious=False).flagged == []


def test_threshold_uses_the_unbiased_std():
    # [0, 0, 0, 0, 1]: mean 0.2, unbiased std sqrt(0.2) = 0.447 -> z(1) = 1.789;
    # the population std (0.4) would give z = 2.0 and flag it at u = 1.9.
    layer = flag_layer("bn", t([0, 0, 0, 0, 1]), 1.9, low_is_suspicious=False)
    assert layer.std == pytest.approx(math.sqrt(0.2), rel=1e-12)
    assert layer.z[4] == pytest.approx(0.8 / math.sqrt(0.2), rel=1e-12)
    assert layer.flagged == []
    assert flag_layer("bn", t([0, 0, 0, 0, 1]), 1.7, low_is_suspicious=False).flagged == [4]


def test_low_is_suspicious_flips_the_side_and_the_sign_of_z():
    scores = [5.0, 5.1, 4.9, 5.0, 0.5]  # mean 4.1
    mean = sum(scores) / 5
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / 4)
    low = flag_layer("bn", t(scores), 1.5, low_is_suspicious=True)
    assert low.flagged == [4]
    assert low.threshold == pytest.approx(mean - 1.5 * std, rel=1e-12)
    assert low.z == pytest.approx([-(s - mean) / std for s in scores], rel=1e-12)
    assert low.z[4] > 0 and all(z < 0 for z in low.z[:4])
    # the same scores with high-is-suspicious flag nothing: no channel is 1.5 std above the mean
    high = flag_layer("bn", t(scores), 1.5, low_is_suspicious=False)
    assert high.flagged == []
    assert high.z == pytest.approx([-z for z in low.z], rel=1e-12)


@pytest.mark.parametrize("low", [False, True])
def test_single_channel_layer_flags_nothing(low):
    layer = flag_layer("bn", t([7.0]), 0.0, low_is_suspicious=low)
    assert layer.flagged == [] and layer.z == [0.0] and layer.threshold is None
    assert math.isnan(layer.std)


@pytest.mark.parametrize("low", [False, True])
def test_constant_layer_flags_nothing_even_at_u_zero(low):
    layer = flag_layer("bn", t([3.0] * 6), 0.0, low_is_suspicious=low)
    assert layer.flagged == [] and layer.z == [0.0] * 6 and layer.std == 0.0 and layer.threshold is None


def test_u_zero_flags_every_channel_strictly_beyond_the_mean():
    layer = flag_layer("bn", t([1.0, 2.0, 3.0, 4.0]), 0.0, low_is_suspicious=False)
    assert layer.flagged == [2, 3]
    assert flag_layer("bn", t([1.0, 2.0, 3.0, 4.0]), 0.0, low_is_suspicious=True).flagged == [0, 1]


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=30),
    u=st.floats(0, 5),
    low=st.booleans(),
)
def test_flags_are_the_channels_beyond_u_std_of_the_layer(scores, u, low):
    arr = np.array(scores, dtype=np.float64)
    mean, std = arr.mean(), arr.std(ddof=1)
    assume(std > 1e-6 * max(1.0, np.abs(arr).max()))
    threshold = mean - u * std if low else mean + u * std
    margin = 1e-9 * (abs(threshold) + std)
    assume(np.all(np.abs(arr - threshold) > margin))  # no score sits on the threshold
    layer = flag_layer("bn", t(scores), u, low_is_suspicious=low)
    expected = [i for i, s in enumerate(scores) if (s < threshold if low else s > threshold)]
    assert layer.flagged == expected
    sign = -1.0 if low else 1.0
    np.testing.assert_allclose(layer.z, sign * (arr - mean) / std, rtol=1e-9, atol=1e-9)


def make_result(layers, *, low=False, u=1.0) -> ScanResult:
    return ScanResult(
        checkpoint="m.pt", arch="smallcnn", method="ep" if low else "clp", method_reason="test", u=u, samples=3,
        device="cpu", layers=layers, low_is_suspicious=low, pruned_params=("weight",), notes=["n"], version="9.9",
    )


def test_ranked_orders_channels_by_z_across_layers():
    a = flag_layer("a", t([1.0, 2.0, 3.0, 10.0]), 1.0, low_is_suspicious=False)
    b = flag_layer("b", t([0.0, 100.0]), 1.0, low_is_suspicious=False)
    result = make_result([a, b])
    rows = result.ranked()
    assert len(rows) == 6 == result.channels_total
    zs = [r[3] for r in rows]
    assert zs == sorted(zs, reverse=True)
    assert rows[0][:2] == ("a", 3)  # z = 1.46 beats b's 0.707: raw scores are not compared
    assert result.flagged_channels() == {"a": [3]}
    assert result.flagged_total == 1


def test_rethreshold_equals_flagging_afresh():
    scores = [1.0, 2.0, 3.0, 4.0, 100.0]
    result = make_result([flag_layer("a", t(scores), 3.0, low_is_suspicious=False)], u=3.0)
    assert result.flagged_total == 0
    again = result.rethreshold(1.0)
    assert again.u == 1.0 and again.flagged_channels() == {"a": [4]}
    assert again.layers[0] == flag_layer("a", t(scores), 1.0, low_is_suspicious=False)
    assert result.flagged_total == 0  # the original is untouched


def test_to_dict_is_strict_json_with_the_documented_fields():
    layers = [
        flag_layer("a", t([1.0, 2.0, 3.0, 4.0, 100.0]), 1.0, low_is_suspicious=False),
        flag_layer("single", t([5.0]), 1.0, low_is_suspicious=False),  # std NaN -> null
    ]
    data = make_result(layers).to_dict()
    text = json.dumps(data, allow_nan=False)  # raises on NaN/inf
    back = json.loads(text)
    assert back["schema_version"] == SCHEMA_VERSION
    for key in ("method", "u", "samples", "device", "layers", "flagged", "version", "channels_total", "flagged_total"):
        assert key in back
    assert back["flagged"] == {"a": [4]}
    assert back["layers"][0]["scores"] == [1.0, 2.0, 3.0, 4.0, 100.0]
    assert back["layers"][1]["std"] is None
    assert back["channels_total"] == 6 and back["flagged_total"] == 1


def test_absolute_flags_masks_at_or_below_u_with_z_the_margin():
    """anp/rnp: flagged when mask <= u; z = u - mask ranks the whole network at once."""
    raw = {"a": t([0.0, 0.2, 0.9, 1.0]), "b": t([0.5, 0.05])}
    layers = flag(raw, 0.2, ranking="absolute", low_is_suspicious=True)
    assert [layer.flagged for layer in layers] == [[0, 1], [1]]
    assert layers[0].z == pytest.approx([0.2, 0.0, -0.7, -0.8])
    assert layers[0].threshold == 0.2
    result = ScanResult("m.pt", "x", "anp", "", 0.2, 10, "cpu", layers, True, ("weight",), ranking="absolute")
    assert [(r[0], r[1]) for r in result.ranked()[:3]] == [("a", 0), ("b", 1), ("a", 1)]
    assert result.top(2) == {"a": [0], "b": [1]}
    assert result.rethreshold(0.5).flagged_channels() == {"a": [0, 1], "b": [0, 1]}
