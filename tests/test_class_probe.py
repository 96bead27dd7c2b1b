"""The per-class probe of ``--repair unlearn`` and its explained divergence (bdprune.class_probe) on hand-made cases.

Its L1 projection, pixel clipping and mixture KL are the trigger probe's, tested in test_probe.py."""

from __future__ import annotations

import math

import pytest
import torch
from _images import make_images

from bdprune.class_probe import ProbeResult, class_gap, class_probe, class_triggers, explained_divergence, persistence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_zero_perturbation_explains_nothing(bn_model):
    images = make_images(64, seed=5)
    [e] = explained_divergence(bn_model, images, [torch.zeros(images.shape[1:])])
    assert e == pytest.approx(0.0, abs=1e-9)


def test_class_probe_shares_and_determinism(bn_model):
    images = make_images(40, seed=6)
    a, b = class_probe(bn_model, images), class_probe(bn_model, images)
    assert a.images == 32 and len(a.success) == 10
    assert all(0.0 <= s <= 1.0 for s in a.success) and 0.0 <= a.gap <= 1.0
    assert a.success[a.target] == max(a.success)
    assert (a.success, a.gap, a.budget) == (b.success, b.gap, b.budget)
    assert len(a.candidates) == 8 and all(p.shape == images.shape[1:] for *_, p in a.candidates)
    for budget, _, _, p in a.candidates:  # every candidate stays within its budget
        kind, value = budget.split("=")
        dim = p.numel()
        if kind == "l2":
            assert float(p.norm()) <= float(value) * math.sqrt(dim) * (1 + 1e-5)
        else:
            assert float(p.abs().sum()) <= float(value) * dim * (1 + 1e-5)
    assert all(p.requires_grad for p in bn_model.parameters())  # restored


def _probe(candidates, classes=4) -> ProbeResult:
    """A probe result with hand-made candidates (budget, class, gap, perturbation)."""
    return ProbeResult([0.0] * classes, 0, 0.0, "", 8, 0.0, None, candidates)


def test_persistence_sums_each_class_lead_where_it_leads_by_min_gap():
    delta = torch.zeros(1, 2, 2)
    probe = _probe([("l2=0.05", 1, 0.5, delta), ("l2=0.1", 1, 0.25, delta), ("l2=0.2", 2, 0.0, delta),
                    ("l1=0.01", 1, 0.05, delta), ("l1=0.02", 3, 0.1, delta), ("l1=0.04", 3, 0.099, delta)])
    # by hand: class 1 = 0.5 + 0.25 (0.05 < 0.1 left out); class 3 = 0.1 (0.099 left out); class 2 leads by nothing
    assert persistence(probe, 0.1) == pytest.approx([0.0, 0.75, 0.0, 0.1])
    assert persistence(probe, 0.0) == pytest.approx([0.0, 0.8, 0.0, 0.199])


def test_class_triggers_keep_the_leading_candidates_and_the_weak_ones_that_explain(monkeypatch):
    import bdprune.class_probe as target

    d = [torch.full((1, 2, 2), float(i)) for i in range(5)]
    probe = _probe([("a", 2, 0.4, d[0]), ("b", 2, 0.0, d[1]), ("c", 1, 0.9, d[2]), ("d", 2, 0.05, d[3]), ("e", 2, 0.1, d[4])])
    shares = {1.0: 0.2, 3.0: 0.1}  # what the weak class-2 candidates explain, by their value
    seen = []

    def fake_explained(model, images, perturbations, **kw):
        seen.append([float(p[0, 0, 0]) for p in perturbations])
        return [shares[float(p[0, 0, 0])] for p in perturbations]

    monkeypatch.setattr(target, "explained_divergence", fake_explained)
    got = class_triggers(None, None, probe, 2, min_gap=0.1, min_explained=0.15)
    # leading: a (0.4) and e (0.1, at the bar); weak: b explains 0.2 (kept), d 0.1 (left out); c is another class;
    # in the probe's order
    assert [float(t[0, 0, 0]) for t in got] == [0.0, 1.0, 4.0]
    assert seen == [[1.0, 3.0]]  # only the weak candidates of the class are measured
    seen.clear()
    assert [float(t[0, 0, 0]) for t in class_triggers(None, None, probe, 1, min_gap=0.1, min_explained=0.15)] == [2.0]
    assert seen == []


def test_probing_some_classes_finds_what_the_full_probe_finds_for_them(bn_model):
    """Each class's perturbation is optimized on its own, so probing a subset gives those classes the
    shares the full probe gives them; the classes left out count as reached by no image."""
    images = make_images(40, seed=6)
    full = class_probe(bn_model, images)
    some = class_probe(bn_model, images, only=[7, 2])
    assert list(some.per_budget) == list(full.per_budget) and len(full.per_budget) == 8
    for budget, shares in some.per_budget.items():
        assert [shares[k] for k in (2, 7)] == [full.per_budget[budget][k] for k in (2, 7)], budget
        assert all(s == 0.0 for k, s in enumerate(shares) if k not in (2, 7))
    assert some.target in (2, 7) and all(cls in (2, 7) for _, cls, _, _ in some.candidates)
    alone = class_probe(bn_model, images, only=[7])  # no competitor: the gap is the class's own share
    assert [gap for _, _, gap, _ in alone.candidates] == [alone.per_budget[b][7] for b, *_ in alone.candidates]


def test_a_model_with_many_classes_is_probed_only_where_asked():
    from bdprune.archs import build_model

    torch.manual_seed(0)
    model, _ = build_model("smallcnn", None, num_classes=150, arch_args={"width": "4"})
    model.eval()
    images = make_images(40, seed=1)
    assert class_probe(model, images) is None  # above PROBE_MAX_CLASSES every class would cost too much
    some = class_probe(model, images, only=[120])
    assert len(some.success) == 150 and some.target == 120 and len(some.candidates) == 8


def test_class_gap_is_the_largest_lead_of_a_named_class_over_every_other():
    per_budget = {"l2=0.1": [0.1, 0.8, 0.3], "l1=0.02": [0.9, 0.2, 0.1]}
    probe = ProbeResult([0.9, 0.2, 0.1], 0, 0.7, "l1=0.02", 32, 0.0, per_budget=per_budget)
    assert class_gap(probe, [1]) == (pytest.approx(0.5), 1, "l2=0.1")  # 0.8 - 0.3, where class 1 leads
    assert class_gap(probe, [1, 0, 1]) == (pytest.approx(0.7), 0, "l1=0.02")  # 0.9 - 0.2 beats it
    assert class_gap(probe, [2]) == (0.0, None, None)  # class 2 never leads
    assert class_gap(probe, [7, -1]) == (0.0, None, None)  # no such classes
