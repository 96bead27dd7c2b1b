"""What ``eval`` and ``prune`` print for people (stdout): ACC and ASR per checkpoint with the
delta of two, and the channels a prune removed with the search that chose them. Scan reports are
the format plug-ins of :mod:`bdprune.report`."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from .errors import BdpruneError
from .progress import stdout_console


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


def print_prune(outcome, console: Console | None = None) -> None:
    """Print a :class:`bdprune.pruning.PruneOutcome` for people (stdout)."""
    console = console or stdout_console()
    by_k = outcome.k is not None
    if outcome.curve:
        what = "k (top-ranked channels)" if by_k else "u"
        curve = Table(title=f"{what} search on validation data (unpruned ACC {outcome.base_acc:.2f}%)")
        for col in ("k" if by_k else "u", "channels pruned", "ACC %", "drop"):
            curve.add_column(col, justify="right")
        for p in outcome.curve:
            chosen = p.channels == outcome.k if by_k else p.u == outcome.u
            step = str(p.channels) if by_k else f"{p.u:g}"
            curve.add_row(step, str(p.channels), f"{p.acc:.2f}", f"{outcome.base_acc - p.acc:+.2f}", style="bold green" if chosen else None)
        console.print(curve)
    how = "weight zeroed, bias set to the clean mean output" if outcome.filled else f"zeroed {' and '.join(outcome.params)}"
    table = Table(title=f"Pruned channels ({outcome.method}: {how})")
    table.add_column("layer")
    table.add_column("pruned", justify="right")
    table.add_column("channels")
    for layer, chans in outcome.channels.items():
        shown = ", ".join(map(str, chans[:16])) + (" ..." if len(chans) > 16 else "")
        table.add_row(layer, str(len(chans)), shown)
    if outcome.channels:
        console.print(table)
    n = sum(map(len, outcome.channels.values()))
    u = f" (top k={outcome.k})" if by_k else "" if outcome.u is None else f" at u={outcome.u:g}"
    console.print(f"pruned {n} of {outcome.channels_total or '?'} channels{u}; wrote {outcome.output}", markup=False, highlight=False)
