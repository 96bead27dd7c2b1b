"""Neural Cleanse (bdprune.purify.nc) against its formulas: the MAD anomaly index and flagging by
hand, the tanh box, the stamp, the cost schedule, the 20% unlearning draw; the reverse engineering
on a hand-built model with a planted one-pixel trigger; and run(): the planted class flagged and
unlearned with the pruned channels held, a model with no outlier returned unchanged, repeatable."""

from __future__ import annotations

import copy

import pytest
import torch
from _images import make_images
from torch import nn

from bdprune.prune import mask_model
from bdprune.purify.base import PurifyJob
from bdprune.purify.nc import (
    CostSchedule,
    NeuralCleanse,
    anomaly_index,
    box,
    flagged_labels,
    reverse_engineer,
    stamp,
    unlearning_pixels,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
PLANTED = [5, 5, 6, 6, 6, 6, 7, 7, 7, 1]  # class 9 is driven by one pixel: its trigger is that pixel
SPREAD = [5, 5, 6, 6, 6, 6, 7, 7, 7, 7]  # trigger sizes spread evenly: no outlier
TRIGGER_PIXEL = sum(PLANTED[:-1])  # the planted class's pixel, in the flattened 8 x 8 image


class Regions(nn.Module):
    """Logit j = 10 * the mean of its own ``sizes[j]`` pixels (consecutive blocks of the flattened
    image; trainable), plus a zero-initialised BatchNorm branch for the pruning to act on. Forcing
    class j takes a mask over its block, so the mask's L1 grows with the block's size."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
        self.mix = nn.Linear(2, len(sizes))
        self.regions = nn.Linear(64, len(sizes), bias=False)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.bias.zero_()
            self.regions.weight.zero_()
            start = 0
            for j, size in enumerate(sizes):
                self.regions.weight[j, start : start + size] = 10.0 / size
                start += size

    def forward(self, x):
        return self.regions(x.flatten(1)) + self.mix(self.features(x).mean((2, 3)))


class Quick(NeuralCleanse):
    """NC with a short search, enough for the tiny ``Regions`` models."""

    search_epochs, search_batch, init_cost = 15, 16, 1e-2


def _model(sizes, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Regions(sizes).eval()


def _job(model, pixels, channels=None, *, epochs=3, seed=0, advanced=None):
    with torch.no_grad():
        labels = model(pixels).argmax(1)
    channels = channels or {}
    return PurifyJob(copy.deepcopy(model), copy.deepcopy(model).eval().requires_grad_(False), pixels, pixels, labels,
                     lambda x: x, lambda m: mask_model(m, channels, ("weight", "bias")), epochs, 0.01, 16,
                     torch.Generator().manual_seed(seed), CPU,
                     (lambda n: None) if advanced is None else advanced.append)


def test_the_anomaly_index_and_flags_by_hand():
    norms = torch.tensor([10.0, 10, 11, 9, 10, 2])
    # median 10; |deviations| 0 0 1 1 0 8 -> median (0 + 1) / 2; MAD = 1.4826 * 0.5
    mad = 1.4826 * 0.5
    torch.testing.assert_close(anomaly_index(norms), torch.tensor([0, 0, 1, 1, 0, 8], dtype=torch.float64) / mad)
    assert flagged_labels(norms) == [5]
    # the same outlier above the median is a large trigger, not a backdoor
    high = torch.tensor([10.0, 10, 11, 9, 10, 30])
    assert anomaly_index(high)[5] == pytest.approx(20 / mad) and flagged_labels(high) == []
    # two low outliers, smallest norm first; the threshold is an index of 2
    assert flagged_labels(torch.tensor([10.0, 10, 11, 9, 10, 2, 1, 10])) == [6, 5]
    assert flagged_labels(torch.tensor([10.0, 10, 11, 9, 10, 10 - 1.9 * mad])) == []
    assert flagged_labels(torch.tensor([10.0, 10, 11, 9, 10, 10 - 2.1 * mad])) == [5]


def test_a_zero_mad_flags_any_smaller_norm_and_nothing_when_all_agree():
    assert anomaly_index(torch.tensor([5.0, 5, 5, 1]))[3] == float("inf")
    assert flagged_labels(torch.tensor([5.0, 5, 5, 1])) == [3]
    assert flagged_labels(torch.tensor([5.0, 5, 5, 5])) == []


def test_the_tanh_box_lies_in_zero_one():
    theta = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0])
    m = box(theta)
    assert m[2] == 0.5 and ((m > 0) & (m < 1)).all() and (m.diff() > 0).all()
    torch.testing.assert_close(m, torch.tanh(theta) / 2 + 0.5)
    extreme = box(torch.tensor([-1e4, 1e4]))
    assert ((extreme >= 0) & (extreme <= 1)).all()


def test_stamp_blends_pattern_into_pixels_by_the_mask():
    pixels = torch.tensor([0.2, 0.8, 0.6, 0.4]).reshape(1, 2, 1, 2)  # two channels
    mask = torch.tensor([[[0.0, 0.5]]])  # 1 x H x W, shared by the channels
    pattern = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    expected = torch.tensor([0.2, 0.4, 0.6, 0.7]).reshape(1, 2, 1, 2)  # (1 - m) * x + m * p
    torch.testing.assert_close(stamp(pixels, mask, pattern), expected)


def test_the_cost_goes_up_after_patience_successes_and_down_after_patience_failures():
    s = CostSchedule(cost=1.0, patience=3)
    for hit in (True, True, False, True, True):  # a failure restarts the count
        s.update(hit)
    assert s.cost == 1.0 and not s.raised
    s.update(True)
    assert s.cost == 2.0 and s.raised and not s.lowered
    for _ in range(3):
        s.update(False)
    assert s.cost == pytest.approx(2.0 / 2**1.5) and s.lowered
    defaults = CostSchedule()
    assert (defaults.cost, defaults.patience, defaults.up, defaults.down) == (1e-3, 5, 2.0, 2**1.5)


def test_a_fifth_of_the_samples_carry_the_triggers_split_between_them():
    pixels = make_images(25, seed=4)  # strictly inside (0, 1)
    zeros = (torch.ones(1, 8, 8), torch.zeros(1, 8, 8))  # stamps an image all 0
    ones = (torch.ones(1, 8, 8), torch.ones(1, 8, 8))  # all 1
    out = unlearning_pixels(pixels, [zeros, ones], 0.2, torch.Generator().manual_seed(0))
    changed = (out != pixels).flatten(1).any(1)
    assert changed.sum() == 5  # 25 - int(25 * 0.8)
    assert (out[changed].flatten(1).amax(1) == 0).sum() == 3 and (out[changed].flatten(1).amin(1) == 1).sum() == 2
    assert torch.equal(out[~changed], pixels[~changed])
    again = unlearning_pixels(pixels, [zeros, ones], 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_the_planted_trigger_has_by_far_the_smallest_mask():
    model = _model(PLANTED).requires_grad_(False)
    pixels = make_images(48, seed=2)
    g = torch.Generator().manual_seed(0)
    found = [reverse_engineer(model, pixels, k, generator=g, epochs=15, batch_size=16, schedule=CostSchedule(cost=1e-2))
             for k in range(len(PLANTED))]
    norms = torch.stack([mask.sum() for mask, _ in found])
    assert norms[9] < norms[:9].min() / 2.5
    assert flagged_labels(norms) == [9]
    mask, pattern = found[9]
    assert mask.flatten().argmax() == TRIGGER_PIXEL  # it found the pixel
    assert (model(stamp(pixels, mask, pattern)).argmax(1) == 9).float().mean() >= 0.98


def test_the_trigger_is_stamped_in_pixel_space_before_the_normalization():
    model = _model(PLANTED).requires_grad_(False)
    pixels = make_images(32, seed=2)
    on_inputs = nn.Sequential(_Affine(0.25, 0.5), model)  # takes (x - 0.5) / 0.25, undoes it first
    a = reverse_engineer(model, pixels, 9, generator=torch.Generator().manual_seed(3), epochs=4, batch_size=16)
    b = reverse_engineer(on_inputs, pixels, 9, lambda x: (x - 0.5) / 0.25, generator=torch.Generator().manual_seed(3),
                         epochs=4, batch_size=16)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


class _Affine(nn.Module):
    def __init__(self, scale, shift):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return x * self.scale + self.shift


class _Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_one_forward_per_batch_and_the_search_stops_early():
    pixels = make_images(40, seed=5)
    full = _Counting(_model(PLANTED).requires_grad_(False))
    reverse_engineer(full, pixels, 9, generator=torch.Generator().manual_seed(0), epochs=60, batch_size=16,
                     early_patience=10**6)
    assert full.calls == 60 * 3  # batches of 16, 16, 8
    early = _Counting(_model(PLANTED).requires_grad_(False))
    reverse_engineer(early, pixels, 9, generator=torch.Generator().manual_seed(0), epochs=60, batch_size=16,
                     early_patience=3, schedule=CostSchedule(cost=1.0, patience=1))
    assert early.calls < full.calls and early.calls % 3 == 0


def test_run_flags_the_planted_class_unlearns_it_and_holds_the_pruned_channel():
    model = _model(PLANTED)
    channels = {"features.1": [0]}
    mask_model(model, channels, ("weight", "bias"))
    pixels = make_images(48, seed=2)
    advanced = []
    job = _job(model, pixels, channels, epochs=3, advanced=advanced)
    report = Quick().run(job)
    assert report.metadata["nc_flagged"] == "9"
    norms = torch.tensor([float(v) for v in report.metadata["nc_mask_l1"].split(",")])
    assert len(norms) == 10 and norms.argmin() == 9
    assert float(report.metadata["nc_anomaly_index"]) == pytest.approx(anomaly_index(norms)[9].item(), rel=0.01)
    assert "flagged class 9" in report.notes[0] and advanced == [1, 1, 1]
    bn = job.net.features[1]
    assert bn.weight[0] == 0 and bn.bias[0] == 0 and bn.weight[1] != model.features[1].weight[1]
    # unlearning the stamped samples with their true labels weakens the planted pixel's pull
    assert job.net.regions.weight[9, TRIGGER_PIXEL] < model.regions.weight[9, TRIGGER_PIXEL]


def test_run_returns_the_model_unchanged_when_no_class_is_flagged():
    model = _model(SPREAD)
    advanced = []
    job = _job(model, make_images(48, seed=2), advanced=advanced)
    report = Quick().run(job)
    assert report.metadata["nc_flagged"] == "" and float(report.metadata["nc_anomaly_index"]) < 2
    assert "unchanged" in report.notes[0] and advanced == []
    for name, value in model.state_dict().items():
        assert torch.equal(job.net.state_dict()[name], value), name


def test_run_repeats_for_a_fixed_seed_and_the_defaults_are_the_references():
    model, pixels = _model(PLANTED), make_images(48, seed=2)
    a, b = _job(model, pixels, epochs=2, seed=4), _job(model, pixels, epochs=2, seed=4)
    ra, rb = Quick().run(a), Quick().run(b)
    assert ra.metadata == rb.metadata
    for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values()):
        assert torch.equal(x, y)
    nc = NeuralCleanse
    assert (nc.name, nc.epochs, nc.lr, nc.batch_size, nc.unlearning_ratio) == ("nc", 100, 0.01, 256, 0.2)
    assert (nc.search_epochs, nc.search_batch, nc.search_lr, nc.init_cost) == (80, 256, 0.1, 1e-3)
