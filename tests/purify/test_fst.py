"""FST (bdprune.purify.fst) against its formula: the penalty by hand, one step against a slow
step-by-step reference, the classifier's norm kept, pruned channels held, and the CLI choice."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _images import make_images

from bdprune.data import ImageSet
from bdprune.purify.fst import FeatureShiftTuning, classifier, shift_penalty
from bdprune.repair import RepairSettings, purify
from bdprune.stats import bn_layers

CPU = torch.device("cpu")


def _data(n=48, seed=3):
    images = make_images(n, seed=seed)
    return ImageSet(images, torch.arange(n) % 10, "clean.npz")


def test_the_penalty_is_alpha_times_the_inner_product_of_the_weights():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    w0 = torch.tensor([[2.0, 1.0], [-4.0, 1.0]])
    # 1*2 + (-2)*1 + 0.5*(-4) + 3*1 = 1
    assert shift_penalty(w, w0, 0.2).item() == pytest.approx(0.2)


def test_one_step_matches_a_step_by_step_reference(bn_model):
    data = _data(32)
    net, report = purify(bn_model, {}, ("weight", "bias"), None, data,
                         RepairSettings("fst", epochs=1, lr=0.05, batch_size=64), device=CPU, seed=7)

    # By hand: re-initialize the head from the same generator, one SGD step on CE + penalty
    # (momentum's first step is the plain gradient), then rescale W to the original norm.
    ref = copy.deepcopy(bn_model)
    head = classifier(ref)
    w0 = head.weight.detach().clone()
    g = torch.Generator().manual_seed(7)
    bound = 1 / math.sqrt(head.in_features)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=g)
        head.bias.uniform_(-bound, bound, generator=g)
    ref.train()
    loss = F.cross_entropy(ref(data.images), data.labels) + FeatureShiftTuning.alpha * (head.weight * w0).sum()
    ref.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.05 * p.grad
        head.weight *= w0.norm() / head.weight.norm()
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert report.metadata == {"fst_alpha": "0.2"}


def test_the_classifier_keeps_its_norm_and_moves_away_from_the_original(bn_model):
    net, _ = purify(bn_model, {}, ("weight", "bias"), None, _data(), RepairSettings("fst", epochs=3), device=CPU)
    w0, w = classifier(bn_model).weight, classifier(net).weight
    torch.testing.assert_close(w.norm(), w0.norm())
    cosine = (w * w0).sum() / (w.norm() * w0.norm())
    assert cosine < 0.5  # re-initialized and pushed away: far from the original direction


def test_pruned_channels_stay_pruned_and_runs_repeat(bn_model):
    layer = next(name for name, _ in bn_layers(bn_model))
    channels = {layer: [0, 2]}
    settings = RepairSettings("fst", epochs=2)
    a, _ = purify(bn_model, channels, ("weight", "bias"), None, _data(), settings, device=CPU, seed=1)
    b, _ = purify(bn_model, channels, ("weight", "bias"), None, _data(), settings, device=CPU, seed=1)
    bn = dict(bn_layers(a))[layer]
    assert bn.weight[[0, 2]].abs().sum() == 0 and bn.bias[[0, 2]].abs().sum() == 0
    assert bn.weight[1] != 0
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert not torch.equal(classifier(a).weight, classifier(bn_model).weight)


def test_the_paper_defaults_fill_unset_settings():
    s = RepairSettings("fst").check()
    assert (s.epochs, s.lr, s.batch_size) == (10, 0.01, 128)
    assert RepairSettings("fst", epochs=3).check().epochs == 3
