"""What ``eval`` prints: ACC and ASR per checkpoint, and the delta when two are compared."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.console import Console

from ..progress import stdout_console
from rich.table import Table

from ..errors import BdpruneError


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_eval(results, output_format: str = "table", console: Console | None = None) -> None:
    """Print a list of :class:`bdprune.evaluate.EvalResult` as a table or JSON (stdout).

    With two results (``eval A --compare B``) the first is *before* and the second *after*: the
    row "delta (after - before)" and the JSON ``delta`` are B minus A, so a drop is negative;
    ``delta`` also names both checkpoints (``before``, ``after``)."""
    console = console or stdout_console()
    if output_format == "json":
        doc = {"schema_version": 1, "results": [asdict(r) for r in results]}
        if len(results) == 2:
            doc["delta"] = _delta(results)
        console.file.write(json.dumps(doc, indent=2) + "\n")
        return
    if output_format != "table":
        raise BdpruneError(f"unknown --format {output_format!r} for eval", hint="use table or json")
    table = Table(title="Evaluation" + (f" (target {results[0].target}, {results[0].trigger})" if results[0].trigger else ""))
    table.add_column("checkpoint", overflow="fold")
    table.add_column("ACC %", justify="right")
    table.add_column("ASR %", justify="right")
    table.add_column("clean / triggered images", justify="right")
    for r in results:
        table.add_row(r.checkpoint, _pct(r.acc), _pct(r.asr), f"{r.n_clean} / {r.n_triggered}")
    if len(results) == 2:
        d = _delta(results)
        table.add_row("delta (after - before)", f"{d['acc']:+.2f}", "-" if d["asr"] is None else f"{d['asr']:+.2f}", "", style="bold")
    console.print(table)


def _delta(results) -> dict:
    """After (the ``--compare`` checkpoint) minus before (the first), in percentage points."""
    before, after = results
    asr = None if before.asr is None or after.asr is None else after.asr - before.asr
    return {"acc": after.acc - before.acc, "asr": asr, "before": before.checkpoint, "after": after.checkpoint}
