"""``--format table``: ranked channels, a per-layer summary and one line of totals, for people."""

from __future__ import annotations

from typing import Sequence

from rich.console import Console
from rich.table import Table

from ..scoring import ScanFailure, ScanResult
from .base import REPORTERS, Reporter


def ranked_table(result: ScanResult, top: int) -> Table:
    """The ``top`` most suspicious channels across layers, ranked by per-layer z-score."""
    direction = "low" if result.low_is_suspicious else "high"
    table = Table(title=f"Top {top} channels by per-layer z ({result.method}: {direction} score is suspicious)")
    for col, justify in (("rank", "right"), ("layer", "left"), ("channel", "right"), ("score", "right"), ("z", "right"), ("flagged", "center")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for rank, (layer, channel, score, z, flagged) in enumerate(result.ranked()[:top], 1):
        style = "bold red" if flagged else None
        table.add_row(str(rank), layer, str(channel), f"{score:.4g}", f"{z:+.2f}", "yes" if flagged else "", style=style)
    return table


def layer_table(result: ScanResult) -> Table:
    """Flagged / total channels per layer, with the layer's raw threshold."""
    table = Table(title="Per-layer summary")
    for col, justify in (("layer", "left"), ("flagged", "right"), ("channels", "right"), ("threshold", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for layer in result.layers:
        threshold = "-" if layer.threshold is None else f"{layer.threshold:.4g}"
        table.add_row(layer.name, str(len(layer.flagged)), str(len(layer.scores)), threshold, style="red" if layer.flagged else None)
    return table


def totals_line(result: ScanResult) -> str:
    """One line: method, why, u, samples, and flagged channels out of all scored."""
    data = f"{result.samples} samples" if result.samples else "no data"
    return (
        f"{result.checkpoint}: {result.method} ({result.method_reason}), u={result.u:g}, {data}, device {result.device}: "
        f"{result.flagged_total} of {result.channels_total} channels flagged in "
        f"{sum(1 for layer in result.layers if layer.flagged)} of {len(result.layers)} layers"
    )


def verdict_line(result: ScanResult) -> str:
    """The checkpoint-level verdict in one line, with its parts, the suspected target and channels."""
    v = result.verdict
    line = f"verdict: {v.label.upper()} ({v.rule} = {v.statistic:.2f}, threshold {v.threshold:g})"
    parts = v.component_text()
    if parts:
        line += f"; {parts}"
    if v.suspicious:
        line += f"; {v.target_text()}"
        if v.drivers:
            line += "; channels: " + ", ".join(f"{d['layer']}:{d['channel']}" for d in v.drivers)
    return line




@REPORTERS.register("table")
class TableReporter(Reporter):
    """Rich tables for a terminal."""

    def write(self, results: Sequence[ScanResult], console: Console, *, top: int, errors: Sequence[ScanFailure] = ()) -> None:  # noqa: D102
        for result in results:
            if top > 0:
                console.print(ranked_table(result, top))
            console.print(layer_table(result))
            console.print(totals_line(result), markup=False, highlight=False)
            if result.verdict is not None:
                console.print(verdict_line(result), style="bold red" if result.verdict.suspicious else "bold green", markup=False, highlight=False)
        for failure in errors:
            console.print(f"not scanned: {failure.error}", style="bold red", markup=False, highlight=False)
