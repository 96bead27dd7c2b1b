"""RNP: the unlearning stop, the recovery's masks, determinism."""

from __future__ import annotations

import copy

import torch
from _images import make_images

from bdprune.data import ImageSet
from bdprune.methods.base import ScoreContext
from bdprune.methods.masks import cross_entropy, labelled_batches
from bdprune.methods.rnp import RNP, recover, unlearn

CPU = torch.device("cpu")


def _data(n=32):
    images = make_images(n, seed=3)
    return ImageSet(images, torch.arange(n) % 10, "clean.npz")


def _batches(n=32, batch=16):
    return labelled_batches(_data(n), purpose="--method rnp", device=CPU, batch_size=batch, normalize=None)


def test_unlearning_stops_after_the_first_epoch_at_or_below_the_target(bn_model):
    data = _batches()
    g = torch.Generator().manual_seed(0)
    _, epochs, acc = unlearn(bn_model, data, lr=0.01, max_epochs=5, stop_acc=1.0, generator=g)
    assert epochs == 1  # any accuracy is <= 100%: stop at once
    _, epochs, acc = unlearn(bn_model, data, lr=0.01, max_epochs=3, stop_acc=-1.0, generator=g)
    assert epochs == 3 and acc >= 0.0  # never reached: run every epoch


def test_unlearning_raises_the_clean_loss_and_leaves_the_model_alone(bn_model):
    before = copy.deepcopy(bn_model.state_dict())
    data = _batches()
    net, _, _ = unlearn(bn_model, data, lr=0.05, max_epochs=4, stop_acc=-1.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = float(cross_entropy(bn_model.train(), data.images, data.labels)[0])
        end = float(cross_entropy(net.train(), data.images, data.labels)[0])
    assert end > start + 0.5
    for key, value in bn_model.state_dict().items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):  # the .train() forward above moves these
            assert torch.equal(value, before[key]), key


def test_recovery_lowers_the_loss_and_keeps_masks_in_unit_interval(bn_model):
    data = _batches()
    net, _, _ = unlearn(bn_model, data, lr=0.05, max_epochs=3, stop_acc=-1.0, generator=torch.Generator().manual_seed(0))
    masks = recover(net, data, lr=0.2, epochs=0, alpha=1.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        start = float(cross_entropy(masks.model.train(), data.images, data.labels)[0])
    masks = recover(net, data, lr=0.2, epochs=10, alpha=1.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        end = float(cross_entropy(masks.model.train(), data.images, data.labels)[0])
    assert end < start
    values = masks.values()
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in values.values())
    assert any(float(v.min()) < 1 for v in values.values())


def test_scores_are_deterministic_per_seed(bn_model):
    opts = {"unlearn_epochs": "2", "recover_epochs": "3", "batch": "16"}
    ctx = lambda seed: ScoreContext(model=bn_model, stats=None, device=CPU, data=_data(), seed=seed)  # noqa: E731
    a, b, c = RNP(opts).score(ctx(0)), RNP(opts).score(ctx(0)), RNP(opts).score(ctx(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_note_when_unlearning_falls_short(bn_model):
    ctx = ScoreContext(model=bn_model, stats=None, device=CPU, data=_data(), seed=0)
    RNP({"unlearn_epochs": "0", "unlearn_lr": "0", "recover_epochs": "1", "stop_acc": "0"}).score(ctx)
    assert any("unlearning stopped after 1 epochs" in note for note in ctx.notes)
