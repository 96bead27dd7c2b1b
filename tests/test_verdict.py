"""The checkpoint-level verdict against hand-computed values."""

import statistics

import pytest

from bdprune.verdict import EXIT_CLEAN, EXIT_FINDINGS, RULES, Verdict, assess, exit_code, robust_z
from helpers_report import make_result


def test_robust_z_matches_median_and_mad_by_hand():
    scores = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]
    median = statistics.median(scores)
    mad = 1.4826 * statistics.median([abs(s - median) for s in scores])
    assert robust_z(scores, False) == pytest.approx([(s - median) / mad for s in scores])
    assert robust_z(scores, True) == pytest.approx([-(s - median) / mad for s in scores])
    assert robust_z(scores[:4], False) == [0.0] * 4  # too few channels for a spread


def test_bnp_rule_is_the_largest_raw_kl():
    clean, spiked = make_result("a.pt"), make_result("b.pt", spike=1.0)
    largest = max(s for layer in spiked.layers for s in layer.scores)
    assert spiked.verdict.statistic == largest and spiked.verdict.suspicious
    assert spiked.verdict.drivers[0]["layer"] == "layer2.bn" and spiked.verdict.drivers[0]["channel"] == 5
    assert clean.verdict.statistic < RULES["bnp"][1] and not clean.verdict.suspicious
    assert assess(clean, fail_threshold=0.0).suspicious  # the flag moves the bar


def test_exit_code_is_the_worst_verdict():
    ok = Verdict(False, 0.0, 1.0, "r")
    bad = Verdict(True, 2.0, 1.0, "r")
    assert exit_code([ok, ok]) == EXIT_CLEAN
    assert exit_code([ok, bad]) == EXIT_FINDINGS
