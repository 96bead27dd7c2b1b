"""SAU: its losses against per-sample loops written out by hand, the shared PGD (bound, init,
pixel space, early stop), and the run (one Adam step per batch, held channels, frozen BN
statistics, determinism)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _images import make_images
from torch import nn

from bdprune.purify.base import PURIFIERS, PurifyJob
from bdprune.purify.sau import (
    SharedAdversarialUnlearning,
    js_divergence,
    pgd_loss,
    shared_loss,
    shared_pgd,
    unlearning_loss,
)

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _to_input(pixels):
    """A normalization, so that pixel space and input space differ."""
    return (pixels - 0.5) / 0.25


def _small_cnn(seed=0):
    """Conv + BatchNorm (random affine and running statistics) + Linear on 1x8x8, 10 classes;
    random, but its predictions do depend on the input (the shared attack finds examples)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 8 * 8, 10))
        with torch.no_grad():
            bn = model[1]
            bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 1.5), bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def _frozen(model):
    return copy.deepcopy(model).eval().requires_grad_(False)


def _job(net, n=32, *, epochs=2, batch_size=16, seed=0, lr=1e-3, hold=lambda m: None, advance=lambda k: None):
    pixels = make_images(n, seed=7).to(next(net.parameters()).dtype)
    return PurifyJob(net=net, reference=_frozen(net), pixels=pixels, inputs=_to_input(pixels),
                     labels=torch.arange(n) % 10, to_input=_to_input, hold=hold, epochs=epochs, lr=lr,
                     batch_size=batch_size, generator=torch.Generator().manual_seed(seed), device=CPU, advance=advance)


def _softmax_row(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _argmax(row):
    return max(range(len(row)), key=lambda j: row[j])


class _Recorder(nn.Module):
    """Wraps a model and keeps every batch it was called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x):
        self.calls.append(x.detach().clone())
        return self.model(x)


def _mean_pixel_model(reference_fooled=True):
    """Two-class linear model: class 1 when the mean pixel passes 0.6 (or, if not
    ``reference_fooled``, always class 0)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).double()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, -6.0]) if reference_fooled else torch.tensor([1.0, 0.0]))
        if reference_fooled:
            model[1].weight[1] = 10.0 / 64
    return model


def test_js_divergence_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    for i, got in enumerate(js_divergence(a, b).tolist()):
        p, q = _softmax_row(a[i].tolist()), _softmax_row(b[i].tolist())
        m = [(x + y) / 2 for x, y in zip(p, q)]
        want = sum(0.5 * x * math.log(x / z) + 0.5 * y * math.log(y / z) for x, y, z in zip(p, q, m))
        assert got == pytest.approx(want, rel=1e-9)
    assert js_divergence(a, a).abs().max() < 1e-12


def test_pgd_loss_matches_a_per_sample_loop():
    g = torch.Generator().manual_seed(1)
    n, c = 12, 5
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    logits_ref = logits.clone()
    logits_ref[:4] = torch.randn(4, c, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    ori = torch.where(torch.arange(n) < 6, logits.argmax(1), (logits.argmax(1) + 1) % c)
    ori_ref = torch.where(torch.arange(n) % 2 == 0, logits_ref.argmax(1), (logits_ref.argmax(1) + 1) % c)
    loss, shared = pgd_loss(logits, logits_ref, labels, ori, ori_ref, beta_1=0.3, beta_2=2.0)

    adv = js = 0.0
    want_shared = []
    for i in range(n):
        row, row_ref, y = logits[i].tolist(), logits_ref[i].tolist(), int(labels[i])
        fooled, fooled_ref = _argmax(row) != int(ori[i]), _argmax(row_ref) != int(ori_ref[i])
        if not fooled:
            adv += -math.log(_softmax_row(row)[y])
        if not fooled_ref:
            adv += -math.log(_softmax_row(row_ref)[y])
        is_shared = fooled and fooled_ref and _argmax(row) == _argmax(row_ref)
        want_shared.append(is_shared)
        if not is_shared:
            js += float(js_divergence(logits[i:i + 1], logits_ref[i:i + 1]))
    assert shared.tolist() == want_shared and any(want_shared) and not all(want_shared)
    assert float(loss) == pytest.approx(0.3 * (-adv / 2 / n) + 2.0 * js / n, rel=1e-9)


def test_shared_loss_matches_a_per_sample_loop_with_the_clamps():
    # rows: the reference's class near-certain (p ~ 1), near-impossible (p ~ 0, both clamps), in between
    logits = torch.tensor([[30.0, 0.0, 0.0], [-30.0, 0.0, 0.0], [0.5, 0.2, -0.1], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]],
                          dtype=torch.float64)
    label_ref = torch.tensor([0, 0, 1, 2, 1])
    poisoned = torch.tensor([True, True, True, False, True])
    total = 0.0
    for i in range(len(logits)):
        if poisoned[i]:
            probs = _softmax_row(logits[i].tolist())
            p = probs[int(label_ref[i])]
            neg = sum(v for j, v in enumerate(probs) if j != int(label_ref[i]))
            total += -(math.log(1e-6 + min(neg, 0.999)) + math.log(1 + 1e-6 - max(p, 0.001))) / 2
    assert float(shared_loss(logits, label_ref, poisoned)) == pytest.approx(total / len(logits), rel=1e-6)
    assert float(shared_loss(logits, label_ref, torch.zeros(5, dtype=torch.bool))) == 0.0


def test_unlearning_loss_matches_a_per_sample_loop():
    net, reference = _small_cnn(seed=0).double(), _small_cnn(seed=1).double().requires_grad_(False)
    pixels = make_images(20, seed=2).double()
    labels = torch.arange(20) % 10
    noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    inputs, per_inputs = _to_input(pixels), _to_input(pixels + 2 * noise - 1)  # strong: some fool the reference
    loss, poisoned, shared = unlearning_loss(net, reference, inputs, per_inputs, labels, lmd_1=1.0, lmd_2=0.5, lmd_3=2.0)
    with torch.no_grad():
        clean, per, clean_ref, per_ref = (m(x).tolist() for m, x in
                                          [(net, inputs), (net, per_inputs), (reference, inputs), (reference, per_inputs)])
    ce = ce_adv = sh = 0.0
    want_poisoned, want_shared = [], []
    for i, y in enumerate(labels.tolist()):
        ce += -math.log(_softmax_row(clean[i])[y]) / 20
        ce_adv += -math.log(_softmax_row(per[i])[y]) / 20
        r = _argmax(per_ref[i])
        fooled_ref = r != y and r != _argmax(clean_ref[i])
        want_poisoned.append(fooled_ref)
        want_shared.append(fooled_ref and _argmax(per[i]) == r)  # r != y, so the model is fooled too
        if fooled_ref:
            p = _softmax_row(per[i])[r]
            sh += -(math.log(1e-6 + min(1 - p, 0.999)) + math.log(1 + 1e-6 - max(p, 0.001))) / 2 / 20
    assert poisoned.tolist() == want_poisoned and shared.tolist() == want_shared and any(want_poisoned)
    assert float(loss.detach()) == pytest.approx(ce + 0.5 * ce_adv + 2.0 * sh, rel=1e-9)


def test_zero_steps_return_the_max_init():
    pixels = make_images(8, seed=3)
    pert = shared_pgd(_small_cnn(), _frozen(_small_cnn()), pixels, torch.arange(8), _to_input, steps=0)
    assert torch.equal(pert, torch.full_like(pixels, 0.2))
    pert = shared_pgd(_small_cnn(), _frozen(_small_cnn()), pixels, torch.arange(8), _to_input, bound=0.1, steps=0)
    assert torch.equal(pert, torch.full_like(pixels, 0.1))


def test_the_perturbation_stays_in_the_bound_and_leaves_both_models_alone():
    net, reference = _small_cnn(seed=0), _frozen(_small_cnn(seed=1))
    before, before_ref = copy.deepcopy(net.state_dict()), copy.deepcopy(reference.state_dict())
    pixels = make_images(16, seed=4)
    pert = shared_pgd(net, reference, pixels, torch.arange(16) % 10, _to_input, bound=0.2, step=0.15, steps=5)
    assert pert.shape == pixels.shape and not pert.requires_grad
    assert pert.abs().max() <= 0.2 and not torch.all(pert == 0.2)  # it moved, within the bound
    for state, model in [(before, net), (before_ref, reference)]:
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in net.parameters())


def test_the_perturbation_is_added_to_pixels_and_not_clamped():
    pixels = make_images(8, seed=5)
    model, reference = _Recorder(_small_cnn()), _Recorder(_frozen(_small_cnn()))
    shared_pgd(model, reference, pixels, torch.arange(8), _to_input, steps=1)
    for calls in (model.calls, reference.calls):
        assert torch.equal(calls[0], _to_input(pixels))  # the clean prediction
        torch.testing.assert_close(calls[1], _to_input(pixels + 0.2))  # the max init, in pixel space
        assert calls[1].max() > _to_input(torch.ones(())) + 0.5  # past white: no clamp to [0, 1]


def test_one_step_goes_down_the_sign_of_the_loss_gradient():
    net, reference = _small_cnn(seed=0), _frozen(_small_cnn(seed=2))
    pixels, labels = make_images(16, seed=6), torch.arange(16) % 10
    start = torch.full_like(pixels, 0.2, requires_grad=True)
    with torch.no_grad():
        ori, ori_ref = net(_to_input(pixels)).argmax(1), reference(_to_input(pixels)).argmax(1)
    per = _to_input(pixels + start)
    loss, _ = pgd_loss(net(per), reference(per), labels, ori, ori_ref, beta_1=0.01, beta_2=1.0)
    loss.backward()
    want = (0.2 - 0.1 * start.grad.sign()).clamp(-0.2, 0.2)
    got = shared_pgd(net, reference, pixels, labels, _to_input, step=0.1, steps=1)
    assert torch.equal(got, want) and (got != 0.2).any()


@pytest.mark.parametrize("reference_fooled, calls", [(True, 2), (False, 6)])
def test_pgd_stops_after_the_step_once_every_sample_is_shared(reference_fooled, calls):
    g = torch.Generator().manual_seed(0)
    pixels = (0.4 + 0.1 * torch.rand(6, 1, 8, 8, generator=g)).double()  # mean < 0.6, + 0.2 > 0.6
    model = _Recorder(_mean_pixel_model())
    reference = _frozen(_mean_pixel_model(reference_fooled))
    shared_pgd(model, reference, pixels, torch.zeros(6, dtype=torch.long), lambda x: x, steps=5)
    assert len(model.calls) == calls  # the clean prediction, then one forward per step taken


def test_run_takes_one_adam_step_per_batch_on_the_unlearning_loss():
    net = _small_cnn().double()
    job = _job(net, n=24, epochs=1, batch_size=64, seed=3, lr=1e-3)
    idx = torch.randperm(24, generator=torch.Generator().manual_seed(3))
    want = copy.deepcopy(net)
    pert = shared_pgd(want, job.reference, job.pixels[idx], job.labels[idx], _to_input)
    loss, poisoned, _ = unlearning_loss(want, job.reference, job.inputs[idx], _to_input(job.pixels[idx] + pert),
                                        job.labels[idx])
    opt = torch.optim.Adam(want.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    original = copy.deepcopy(net.state_dict())
    SharedAdversarialUnlearning().run(job)
    assert poisoned.any()  # the shared term took part
    for key, value in want.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value, rtol=1e-9, atol=1e-12, msg=key)
    assert any(not torch.equal(value, original[key]) for key, value in net.state_dict().items())


def test_run_trains_holds_pruned_channels_keeps_bn_statistics_and_reports():
    net = _small_cnn()
    bn = net[1]
    held = []

    def hold(model):  # channel 0 of the BatchNorm is pruned (not yet zero: hold must do it)
        held.append(model)
        with torch.no_grad():
            model[1].weight[0] = 0.0
            model[1].bias[0] = 0.0

    ticks = []
    job = _job(net, epochs=3, hold=hold, advance=ticks.append)
    reference_state = copy.deepcopy(job.reference.state_dict())
    running = bn.running_mean.clone(), bn.running_var.clone()
    result = SharedAdversarialUnlearning().run(job)
    assert ticks == [1, 1, 1] and len(held) == 3 * 2 and all(m is net for m in held)  # after every step
    assert bn.weight[0] == 0 and bn.bias[0] == 0
    assert not torch.equal(bn.weight[1:], _small_cnn()[1].weight[1:])  # the rest was trained
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])  # eval mode
    for key, value in job.reference.state_dict().items():
        assert torch.equal(value, reference_state[key]), key
    assert len(result.notes) == 1 and "3 rounds" in result.notes[0] and "/32 samples" in result.notes[0]
    assert result.metadata["sau_bound"] == "0.2" and result.metadata["sau_lambda"] == "1,0,1"


def test_run_is_deterministic_for_a_seed():
    def trained(seed):
        net = _small_cnn()
        SharedAdversarialUnlearning().run(_job(net, seed=seed))
        return net.state_dict()

    first, again, other = trained(0), trained(0), trained(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed sets the batch order


def test_registered_with_the_papers_defaults():
    sau = PURIFIERS.get("sau")
    assert sau is SharedAdversarialUnlearning
    assert (sau.epochs, sau.lr, sau.batch_size) == (100, 1e-4, 256)
    assert (sau.bound, sau.step, sau.steps, sau.beta_1, sau.beta_2) == (0.2, 0.2, 5, 0.01, 1.0)
    assert (sau.lmd_1, sau.lmd_2, sau.lmd_3) == (1.0, 0.0, 1.0)


def test_the_softmax_helper_agrees_with_torch():
    # the per-sample loops above rest on _softmax_row: check it once against torch
    row = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    assert _softmax_row(row[0].tolist()) == pytest.approx(F.softmax(row, 1)[0].tolist(), rel=1e-12)
