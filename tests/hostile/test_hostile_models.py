"""Models bdprune cannot or can only partly audit: no BatchNorm, BN without running statistics,
zero or NaN running variances, one-channel layers."""

from __future__ import annotations

import math

import pytest
import torch

from bdprune.errors import BdpruneError
from bdprune.methods.base import VARIANCE_FLOOR
from _pipeline import score
from bdprune.scan import load_model
from bdprune.data import load_images

METHODS = ["bnp", "ep", "clp"]


def _save(files, factory: str, edit=None, name: str = "net.pt"):
    """Build ``nets.py:factory``, optionally edit its state_dict, save it; return the path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostile_nets", files.nets)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    torch.manual_seed(0)
    model = getattr(nets, factory)().eval()
    state = model.state_dict()
    if edit is not None:
        edit(state)
    path = files.root / name
    torch.save(state, path)
    return path


def _score(files, path, factory, method):
    loaded = load_model(path, f"{files.nets}:{factory}")
    data = load_images(files.data) if method != "clp" else None
    return score(loaded, method, data=data, device="cpu", show_progress=False)


@pytest.mark.parametrize("method", METHODS)
def test_model_without_batchnorm(files, expect_error, method):
    path = _save(files, "nobn")
    data = ["--data", files.data] if method != "clp" else []
    line = expect_error("scan", path, "--arch", "nets.py:nobn", "-m", method, *data, names="net.pt")
    assert "no BatchNorm layers" in line and "--arch" in line


@pytest.mark.parametrize("method", ["bnp", "clp"])
def test_batchnorm_without_running_stats_refused_by_methods_that_need_them(files, expect_error, method):
    path = _save(files, "untracked")
    data = ["--data", files.data] if method != "clp" else []
    line = expect_error("scan", path, "--arch", "nets.py:untracked", "-m", method, *data, names="net.pt")
    assert "bn1 keeps no running statistics" in line and "track_running_stats=False" in line


def test_batchnorm_without_running_stats_is_fine_for_ep(files):
    """EP reads only the BN inputs, so a BN without running statistics can still be scored."""
    result = _score(files, _save(files, "untracked"), "untracked", "ep")
    assert [layer.name for layer in result.layers] == ["bn1", "bn2"]
    assert all(math.isfinite(s) for layer in result.layers for s in layer.scores)


def test_checkpoint_missing_running_stats(files, expect_error):
    def drop(state):
        del state["bn1.running_var"]

    path = _save(files, "plain", drop)
    line = expect_error("scan", path, "--arch", "nets.py:plain", names="net.pt")
    assert "1 missing: bn1.running_var" in line


@pytest.mark.parametrize("method", METHODS)
def test_zero_running_var_scores_finite_with_a_note(files, method):
    path = _save(files, "plain", lambda s: s["bn1.running_var"].zero_())
    result = _score(files, path, "plain", method)
    assert all(math.isfinite(s) for layer in result.layers for s in layer.scores)
    if method == "ep":  # EP never reads running_var
        return
    note = f"bn1: running_var is zero in 4 channel(s) (0, 1, 2, 3); floored at {VARIANCE_FLOOR:g}"
    assert note in result.notes


def test_zero_running_var_note_on_the_command_line(files, cli):
    path = _save(files, "plain", lambda s: s["bn1.running_var"].zero_())
    out = cli("scan", path, "--arch", "nets.py:plain", "--data", files.data)
    assert out.exit_code in (0, 1) and not out.error_lines, out.stderr
    assert "note: bn1: running_var is zero in 4 channel(s)" in out.stderr


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_running_var_is_an_error(files, expect_error, method, value):
    def poison(state):
        state["bn1.running_var"][1] = value

    path = _save(files, "plain", poison)
    data = ["--data", files.data] if method != "clp" else []
    line = expect_error("scan", path, "--arch", "nets.py:plain", "-m", method, *data, names="net.pt")
    # Checked before any method runs (EP never reads running_var but would see NaN downstream).
    assert "bn1.running_var holds NaN or infinite values" in line


@pytest.mark.parametrize("method", METHODS)
def test_nan_weight_is_an_error_never_a_silent_score(files, method):
    def poison(state):
        state["conv1.weight"][0, 0, 0, 0] = math.nan

    path = _save(files, "plain", poison)
    with pytest.raises(BdpruneError, match="conv1.weight holds NaN or infinite values"):
        _score(files, path, "plain", method)


@pytest.mark.parametrize("method", METHODS)
def test_single_channel_layer(files, method):
    """bn1 has one channel: it is scored, has no spread, and nothing in it is flagged."""
    result = _score(files, _save(files, "onechannel"), "onechannel", method)
    layer = next(layer for layer in result.layers if layer.name == "bn1")
    assert len(layer.scores) == 1 and layer.flagged == [] and layer.z == [0.0]
    assert math.isfinite(layer.scores[0])


def test_single_channel_layer_on_the_command_line(files, cli):
    path = _save(files, "onechannel")
    for method in METHODS:
        data = ["--data", files.data] if method != "clp" else []
        out = cli("scan", path, "--arch", "nets.py:onechannel", "-m", method, *data, "--format", "json")
        assert out.exit_code in (0, 1) and not out.error_lines, out.stderr
        assert "Traceback" not in out.stderr
