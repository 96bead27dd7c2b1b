"""The checkpoint-level verdict against hand-computed values."""

import statistics

import numpy as np
import pytest
from helpers_report import make_result

from bdprune.verdict import (
    COMPOSITION_MARGIN,
    KL_QUANTILE,
    KL_RATIO_BAR,
    RULES,
    assess,
    composition_explains,
    kl_ratio,
    quantile,
    robust_z,
)


def test_robust_z_matches_median_and_mad_by_hand():
    scores = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]
    median = statistics.median(scores)
    mad = 1.4826 * statistics.median([abs(s - median) for s in scores])
    assert robust_z(scores, False) == pytest.approx([(s - median) / mad for s in scores])
    assert robust_z(scores, True) == pytest.approx([-(s - median) / mad for s in scores])
    assert robust_z(scores[:4], False) == [0.0] * 4  # too few channels for a spread


@pytest.mark.parametrize("n", [1, 2, 7, 96])
def test_quantile_is_numpys_linear_quantile(n):
    values = list(np.random.default_rng(n).random(n))
    for q in (0.0, 0.1, 0.5, KL_QUANTILE, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))


def test_kl_ratio_is_the_largest_kl_over_the_networks_90th_percentile():
    spiked = make_result("b.pt", spike=1.0)
    every = np.array([s for layer in spiked.layers for s in layer.scores])
    ratio, channels = kl_ratio(spiked)
    assert ratio == pytest.approx(every.max() / np.quantile(every, 0.9))
    assert channels[0][1:3] == ("layer2.bn", 5) and channels[0][3] == every.max()


def test_the_bnp_verdict_is_scale_free():
    """Multiplying every KL by a constant (another data set's noise floor) changes nothing."""
    for spike in (0.0, 1.0):
        a = make_result("a.pt", spike=spike)
        b = make_result("a.pt", spike=spike)
        for layer in b.layers:
            layer.scores = [1000.0 * s for s in layer.scores]
        va, vb = assess(a), assess(b)
        assert va.statistic == pytest.approx(vb.statistic) and va.suspicious == vb.suspicious


def test_bnp_rule_without_a_model_is_the_kl_ratio_part_and_says_so():
    clean, spiked = make_result("a.pt"), make_result("b.pt", spike=1.0)
    assert RULES["bnp"] == ("trigger|kl-ratio", 1.0) and RULES["bnp+"] == RULES["bnp"]
    v = spiked.verdict
    assert v.rule == "bnp-kl-ratio" and v.suspicious and v.statistic == pytest.approx(kl_ratio(spiked)[0] / KL_RATIO_BAR)
    assert v.components["kl_ratio"]["bar"] == KL_RATIO_BAR and "trigger" not in v.components
    assert any("probe not run" in note for note in v.notes)
    assert v.drivers[0]["layer"] == "layer2.bn" and v.drivers[0]["channel"] == 5
    assert v.target is None  # the KL part alone names no class
    assert not clean.verdict.suspicious and clean.verdict.drivers == []
    assert assess(clean, fail_threshold=0.0).suspicious  # the flag moves the bar
    assert not assess(spiked, fail_threshold=1e6).suspicious


def _per_class(leads: dict[int, float], classes: int = 10):
    """A per-class probe result where each class of ``leads`` takes that share at its own budget."""
    import torch

    from bdprune.class_probe import ProbeResult

    per_budget, candidates = {}, []
    for i, (cls, share) in enumerate(leads.items()):
        shares = [0.0] * classes
        shares[cls] = share
        per_budget[f"l1=0.0{i + 1}"] = shares
        candidates.append((f"l1=0.0{i + 1}", cls, share, torch.full((1, 8, 8), float(cls))))
    return ProbeResult([0.0] * classes, 0, 0.0, "", 32, 0.0, candidates=candidates, per_budget=per_budget)


@pytest.mark.parametrize(("explained", "composition", "explains"), [
    (0.60, None, False),  # no clean image of the class: nothing explains it
    (0.60, 0.20, False),
    (0.60, 0.60 - COMPOSITION_MARGIN - 0.001, False),
    (0.60, 0.60 - COMPOSITION_MARGIN + 0.001, True),  # within the margin: the class make-up explains it
    (0.60, 0.70, True),
])
def test_a_candidate_is_set_aside_when_the_class_make_up_explains_it_within_the_margin(explained, composition, explains):
    import torch

    from bdprune.probe import Candidate

    cand = Candidate("l2=0.2", torch.zeros(1, 2, 2), 3, 0.9, 0.9, explained, 0.2, composition)
    assert composition_explains(cand) is explains


def test_the_class_gap_counts_the_classes_of_candidates_that_explain_some_divergence():
    import torch

    from bdprune.probe import Candidate
    from bdprune.verdict import GAP_MIN_EXPLAINED, gap_classes

    def cand(target, explained):
        return Candidate("l2=0.2", torch.zeros(1, 2, 2), target, 0.1, 0.1, explained, 0.2)

    weak, strong = GAP_MIN_EXPLAINED - 0.001, GAP_MIN_EXPLAINED
    assert gap_classes([cand(4, weak), cand(7, strong), cand(2, 0.6), cand(7, weak)]) == [2, 7]
    assert gap_classes([cand(4, weak), cand(4, -0.3)]) == []


def test_thorough_decides_on_the_class_gap_of_a_class_the_trigger_probe_named(monkeypatch, bn_model):
    """--thorough: the statistic is the larger of trigger share / TRIGGER_BAR and class gap /
    CLASS_GAP_BAR; only classes the trigger probe's candidates name count, and the deciding class
    is the target, with the per-class probe's perturbation as the trigger drawn."""
    from _images import make_images

    import bdprune.class_probe as cp
    from bdprune.api import scan_model
    from bdprune.verdict import CLASS_GAP_BAR, GAP_MIN_EXPLAINED, TRIGGER_BAR

    images = make_images(200, seed=3)
    plain = scan_model(bn_model, images, device="cpu").verdict
    named = {c["class"] for c in plain.components["trigger"]["candidates"] if c["explained"] >= GAP_MIN_EXPLAINED}
    cls, other = min(named), min(set(range(10)) - named)

    monkeypatch.setattr(cp, "class_probe", lambda *a, **k: _per_class({cls: 0.9, other: 1.0}))
    v = scan_model(bn_model, images, device="cpu", thorough=True).verdict
    share = v.components["trigger"]["value"]
    assert v.rule == "bnp-trigger+class-gap" and v.components["class_gap"]["class"] == cls
    assert v.components["class_gap"]["value"] == pytest.approx(0.9)  # class `other` is not named: its 1.0 does not count
    assert v.components["class_gap"]["shares"] == _per_class({cls: 0.9, other: 1.0}).per_budget  # the evidence, per budget
    assert v.statistic == pytest.approx(max(share / TRIGGER_BAR, 0.9 / CLASS_GAP_BAR))
    assert v.suspicious and v.target == cls and cls in v.targets and float(v.trigger.mean()) == float(cls)

    monkeypatch.setattr(cp, "class_probe", lambda *a, **k: _per_class({other: 1.0}))
    v = scan_model(bn_model, images, device="cpu", thorough=True).verdict
    assert v.components["class_gap"]["value"] == 0.0 and v.statistic == pytest.approx(plain.statistic)
    assert v.suspicious == plain.suspicious

    monkeypatch.setattr(cp, "class_probe", lambda *a, **k: None)  # above PROBE_MAX_CLASSES
    v = scan_model(bn_model, images, device="cpu", thorough=True).verdict
    assert v.rule == "bnp-trigger" and "class_gap" not in v.components
    assert any("class gap not run (more than 100 classes)" in n for n in v.notes)
