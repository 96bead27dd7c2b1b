"""``--format markdown``: a summary fit for a pull-request comment."""

from __future__ import annotations

from typing import Sequence

from rich.console import Console

from ..scoring import ScanFailure, ScanResult
from .base import REPORTERS, Reporter


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_report(results: Sequence[ScanResult], top: int, errors: Sequence[ScanFailure] = ()) -> str:
    """A verdict table over all checkpoints (a row ``error`` for each that could not be scanned),
    then each checkpoint's top channels."""
    lines = ["## bdprune scan", "",
             "| checkpoint | method | verdict | rule | statistic | threshold | suspected target | channels behind the verdict | flagged channels (u) |",
             "|---|---|---|---|---:|---:|---:|---|---:|"]
    for r in results:
        v = r.verdict
        verdict = "-" if v is None else ("**suspicious**" if v.suspicious else "clean")
        stat = "-" if v is None else f"{v.statistic:.2f}"
        thr = "-" if v is None else f"{v.threshold:g}"
        target = "-" if v is None or v.target is None else ", ".join(map(str, v.targets or [v.target]))
        rule = "-" if v is None else v.rule
        drivers = "-" if v is None or not v.drivers else ", ".join(f"`{_cell(d['layer'])}:{d['channel']}`" for d in v.drivers)
        lines.append(f"| `{_cell(r.checkpoint)}` | {r.method} | {verdict} | {rule} | {stat} | {thr} | {target} | {drivers} | "
                     f"{r.flagged_total} / {r.channels_total} (u={r.u:g}) |")
    for e in errors:
        lines.append(f"| `{_cell(e.checkpoint)}` | - | **error** | - | - | - | - | {_cell(e.error)} | - |")
    for r in results:
        if top <= 0:
            break
        lines += ["", f"<details><summary>Top {top} channels of <code>{_cell(r.checkpoint)}</code></summary>", ""]
        lines += ["| rank | layer | channel | score | z | flagged |", "|---:|---|---:|---:|---:|:---:|"]
        for rank, (layer, channel, score, z, flagged) in enumerate(r.ranked()[:top], 1):
            lines.append(f"| {rank} | `{_cell(layer)}` | {channel} | {score:.4g} | {z:+.2f} | {'yes' if flagged else ''} |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


@REPORTERS.register("markdown")
class MarkdownReporter(Reporter):
    """Writes :func:`markdown_report`."""

    def write(self, results: Sequence[ScanResult], console: Console, *, top: int, errors: Sequence[ScanFailure] = ()) -> None:  # noqa: D102
        console.file.write(markdown_report(results, top, errors))
