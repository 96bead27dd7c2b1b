"""Tests for bdprune.methods.bnp_plus and the pieces bnp+ adds: network-wide ranking, the clean
mean fill, and the prune count from a clean-accuracy budget (bdprune.tune.choose_k)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _slow_reference import bn_names, capture_bn_inputs

from bdprune.evaluate import accuracy
from bdprune.methods import METHODS, ScoreContext
from bdprune.methods.bnp import BNP
from bdprune.methods.bnp_plus import BNPPlus, clean_output_mean
from bdprune.data import ImageSet
from bdprune.prune import mask_model
from _pipeline import score
from bdprune.scan import load_model
from bdprune.scoring import flag_network
from bdprune.stats import bn_layers, collect_stats
from bdprune.tune import choose_k, k_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def scan(saved, images, u=3.0):
    """A bnp+ scan of the saved checkpoint, through bdprune's own loader."""
    loaded = load_model(saved.path, saved.arch, arch_args=saved.arch_args)
    return score(loaded, "bnp+", data=ImageSet(images, None, "test.npz"), u=u, device="cpu", show_progress=False)


def test_registered_as_network_ranked_with_bnps_scores(bn_model, clean_images):
    assert METHODS.get("bnp+") is BNPPlus
    assert BNPPlus.ranking == "network" and BNPPlus.pruned_params == ("weight", "bias")
    assert BNPPlus.data_role == "clean" and not BNPPlus.low_is_suspicious
    stats = collect_stats(bn_model, clean_images, device=CPU, show_progress=False)
    ctx = ScoreContext(model=bn_model, stats=stats, device=CPU)
    plus, bnp = BNPPlus().score(ctx), BNP().score(ctx)
    assert plus.keys() == bnp.keys()
    for layer in bnp:
        assert torch.equal(plus[layer], bnp[layer])


def test_fill_is_the_mean_bn_output_on_the_clean_images(bn_model, bn_checkpoint, clean_images):
    """Slow reference: run the images, keep every BN layer's output, average it per channel."""
    outputs: dict[str, list[np.ndarray]] = {}
    handles = [
        bn.register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, []).append(out.double().numpy()))
        for name, bn in bn_layers(bn_model)
    ]
    with torch.no_grad():
        bn_model.eval()(clean_images)
    for h in handles:
        h.remove()
    fill = scan(bn_checkpoint, clean_images).fill
    assert list(fill) == bn_names(bn_model)
    for name, chunks in outputs.items():
        out = np.concatenate(chunks)
        expected = out.transpose(1, 0, *range(2, out.ndim)).reshape(out.shape[1], -1).mean(axis=1)
        np.testing.assert_allclose(fill[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_clean_output_mean_by_hand():
    # gamma * (mu_b - mu_r) / sqrt(var_r + eps) + beta = 2 * (3 - 1) / sqrt(4 + 0) + 0.5 = 2.5
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    assert clean_output_mean(t(3.0), t(1.0), t(4.0), t(2.0), t(0.5), 0.0).item() == pytest.approx(2.5)


def test_a_filled_channel_outputs_its_fill_constantly(bn_model, bn_checkpoint, clean_images):
    result = scan(bn_checkpoint, clean_images)
    layer, channel, *_ = result.ranked()[0]
    pruned = copy.deepcopy(bn_model)
    mask_model(pruned, {layer: [channel]}, result.pruned_params, result.fill)
    seen = []
    bn = dict(bn_layers(pruned))[layer]
    handle = bn.register_forward_hook(lambda _m, _i, out: seen.append(out[:, channel]))
    with torch.no_grad():
        pruned.eval()(clean_images)
    handle.remove()
    values = torch.cat([s.flatten() for s in seen])
    assert torch.allclose(values, torch.full_like(values, result.fill[layer][channel]), atol=1e-6)
    assert bn.weight[channel] == 0


def test_network_flags_and_z_match_a_slow_reference():
    gen = torch.Generator().manual_seed(3)
    raw = {"a": torch.rand(6, generator=gen, dtype=torch.float64), "b": torch.rand(9, generator=gen, dtype=torch.float64) * 4}
    raw["b"][2] = 40.0  # one channel far above everything
    every = np.concatenate([raw["a"].numpy(), raw["b"].numpy()])
    mean, std = every.mean(), every.std(ddof=1)
    for u in (0.5, 1.0, 3.0):
        layers = flag_network(raw, u)
        for layer in layers:
            s = raw[layer.name].numpy()
            # z is in units of the std, so its scale is 1: a floor of 1e-12 for z near zero
            np.testing.assert_allclose(layer.z, (s - mean) / std, rtol=1e-12, atol=1e-12)
            assert layer.flagged == np.nonzero(s > mean + u * std)[0].tolist()
    assert flag_network(raw, 3.0)[1].flagged == [2] and flag_network(raw, 3.0)[0].flagged == []


def test_top_k_is_the_k_highest_scores_of_the_whole_network(bn_checkpoint, clean_images):
    result = scan(bn_checkpoint, clean_images)
    everything = sorted(((s, layer.name, c) for layer in result.layers for c, s in enumerate(layer.scores)), reverse=True)
    for k in (1, 3, 10):
        expected: dict[str, list[int]] = {}
        for _, name, c in everything[:k]:
            expected.setdefault(name, []).append(c)
        assert result.top(k) == {name: sorted(cs) for name, cs in expected.items()}


def test_k_grid_by_hand():
    assert k_grid(132) == [1, 2, 3, 4, 6, 8, 11, 16, 23, 33]
    assert k_grid(3) == [1]


@pytest.mark.parametrize("budget", [0.0, 12.0, 30.0])  # k = 0, 1 and 4 on this model
def test_choose_k_keeps_the_last_k_before_the_first_breach(bn_model, bn_checkpoint, clean_images, budget):
    """Reference: prune each k of the grid on a copy, measure ACC, stop at the first breach.
    Labels are the unpruned model's own predictions, so the unpruned ACC is 100%."""
    with torch.no_grad():
        labels = bn_model.eval()(clean_images).argmax(1)
    val = ImageSet(clean_images, labels, "val.npz")
    result = scan(bn_checkpoint, clean_images)
    grid = [1, 2, 4, 8, 16, 32]
    k, base, curve = choose_k(bn_model, result, val, budget, device=CPU, grid=grid)
    assert base == 100.0
    expected_k, expected_curve = 0, []
    for kk in grid:
        trial = copy.deepcopy(bn_model)
        mask_model(trial, result.top(kk), result.pruned_params, result.fill)
        with torch.no_grad():
            acc = accuracy(trial.eval()(clean_images).argmax(1), labels)
        expected_curve.append((kk, acc))
        if 100.0 - acc > budget:
            break
        expected_k = kk
    assert [(p.channels, p.acc) for p in curve] == expected_curve
    assert k == expected_k


def test_the_fixture_model_has_bn_inputs_to_rank(bn_model, bn_checkpoint, clean_images):
    # guards the tests above against a degenerate fixture (all scores equal would make them vacuous)
    inputs = capture_bn_inputs(bn_model, clean_images)
    assert len(inputs) >= 2
    result = scan(bn_checkpoint, clean_images)
    assert len({round(s, 12) for layer in result.layers for s in layer.scores}) > 10
