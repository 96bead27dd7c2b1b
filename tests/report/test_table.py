"""``--format table``: the ranked channels, the per-layer summary, the totals and the verdict line."""

from __future__ import annotations

from rich.console import Console

from bdprune.report import REPORTERS
from bdprune.report.table import verdict_line
from bdprune.scoring import ScanFailure
from helpers_report import make_result


def render(results, errors=(), top=3) -> str:
    console = Console(width=1000, record=True, color_system=None)  # wide enough that no line wraps
    REPORTERS.get("table")().write(results, console, top=top, errors=errors)
    return console.export_text()


def test_table_shows_the_top_channels_and_the_verdict():
    result = make_result("b.pt", spike=1.0)
    text = render([result])
    rank1 = result.ranked()[0]
    assert "Top 3 channels" in text and f"{rank1[0]}" in text and "Per-layer summary" in text
    assert "b.pt: bnp (test), u=3, 10 samples, device cpu:" in text
    assert verdict_line(result) in text.splitlines()
    v = result.verdict
    assert verdict_line(result).startswith(f"verdict: {v.label.upper()} ({v.rule} = {v.statistic:.2f}, threshold {v.threshold:g})")


def test_errors_and_no_top_table():
    text = render([make_result("a.pt")], errors=[ScanFailure("c.pt", "c.pt: cannot be read")], top=0)
    assert "Top" not in text and "not scanned: c.pt: cannot be read" in text
