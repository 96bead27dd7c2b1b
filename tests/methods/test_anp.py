"""ANP: one iteration against a hand-computed reference, bounds, determinism, the CLI path."""

from __future__ import annotations

import copy

import pytest
import torch
from _images import make_images

from bdprune.data import ImageSet
from bdprune.methods.anp import ANP
from bdprune.methods.base import ScoreContext
from bdprune.stats import bn_layers

CPU = torch.device("cpu")


def _ctx(model, n=24, seed=0, labels=True):
    images = make_images(n, seed=7)
    data = ImageSet(images, torch.arange(n) % 10 if labels else None, "clean.npz")
    return ScoreContext(model=model, stats=None, device=CPU, data=data, seed=seed)


def test_one_iteration_without_noise_is_one_sgd_step_on_gamma_scaled_gradients(bn_model):
    """eps = 0: the loss is alpha * CE (the noisy term is 0), so after one SGD step from m = 1,
    m = clamp(1 - lr * alpha * dCE/dm) with dCE/dm_k = gamma_k * dCE/dgamma_k (chain rule on
    gamma * m), taken here from a plain copy of the model in training mode on the same batch."""
    lr, alpha, n = 0.2, 0.2, 24
    ctx = _ctx(bn_model, n=n, seed=11)
    scores = ANP({"iterations": "1", "eps": "0", "lr": str(lr), "alpha": str(alpha), "batch": "16"}).score(ctx)
    idx = torch.randint(n, (16,), generator=torch.Generator().manual_seed(11))  # ANP's first draw
    reference = copy.deepcopy(bn_model).train()
    x, y = ctx.data.images[idx], ctx.data.labels[idx]
    loss = torch.nn.functional.cross_entropy(reference(x), y)
    layers = bn_layers(reference)
    grads = torch.autograd.grad(loss, [bn.weight for _, bn in layers])
    for (name, bn), g in zip(layers, grads):
        expected = (1 - lr * alpha * g * bn.weight.detach()).clamp(0, 1).double()
        torch.testing.assert_close(scores[name], expected, rtol=1e-5, atol=1e-6)


def test_masks_stay_in_unit_interval_deterministic_per_seed_and_model_unchanged(bn_model):
    before = copy.deepcopy(bn_model.state_dict())
    opts = {"iterations": "6", "batch": "16", "lr": "5"}  # a large lr drives masks against both bounds
    a = ANP(opts).score(_ctx(bn_model, seed=1))
    b = ANP(opts).score(_ctx(bn_model, seed=1))
    c = ANP(opts).score(_ctx(bn_model, seed=2))
    for name in a:
        assert torch.equal(a[name], b[name])
        assert float(a[name].min()) >= 0.0 and float(a[name].max()) <= 1.0
    assert any(not torch.equal(a[name], c[name]) for name in a)
    assert any(float(v.min()) == 0.0 for v in a.values())  # the clamp was reached
    for key, value in bn_model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_zero_iterations_leave_every_mask_at_one(bn_model):
    scores = ANP({"iterations": "0"}).score(_ctx(bn_model))
    assert all(torch.equal(v, torch.ones_like(v)) for v in scores.values())


def test_needs_labels(bn_model):
    from bdprune.errors import BdpruneError

    with pytest.raises(BdpruneError, match="no labels"):
        ANP({"iterations": "1"}).score(_ctx(bn_model, labels=False))
