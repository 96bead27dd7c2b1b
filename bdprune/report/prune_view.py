"""What ``prune`` prints: the channels pruned per layer, the u (or k) curve if one was searched, where it went."""

from __future__ import annotations

from rich.console import Console

from rich.table import Table

from ..progress import stdout_console


def print_prune(outcome, console: Console | None = None) -> None:
    """Print a :class:`bdprune.core.PruneOutcome` for people (stdout)."""
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
