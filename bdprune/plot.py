"""Pictures of a scan and of a pruning budget, drawn with matplotlib (the optional
``bdprune[plot]`` extra).

Figures are built with the object API on an Agg canvas, never through pyplot, so plotting
neither needs a display nor switches the backend of a notebook that imports bdprune.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

from .atomic import atomic_path, check_output_path
from .errors import BdpruneError
from .scoring import ScanResult

PLOT_FORMATS = {".png": "png", ".svg": "svg"}
EXTRA_HINT = "pip install 'bdprune[plot]'"
DPI = 110
CLEAN, FLAGGED, DRIVER, THRESHOLD = "#4c72b0", "#d62728", "#ff7f0e", "#222222"


def require_matplotlib(what: str = "plotting") -> None:
    """Raise a one-line error naming the ``plot`` extra when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise BdpruneError(f"{what} needs matplotlib, which is not installed", hint=EXTRA_HINT) from None


def check_plot_path(path: Path, *, inputs: Sequence[Path] = (), option: str = "--plot") -> str:
    """The image format for ``path`` (by suffix); refuse other suffixes, unwritable places and
    the input files, and a missing matplotlib, before any work is done."""
    fmt = PLOT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise BdpruneError(f"{option} writes PNG or SVG, chosen by the file's suffix", path=path, hint="name it .png or .svg")
    check_output_path(Path(path), inputs=tuple(inputs), force=True)
    require_matplotlib(option)
    return fmt


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def verdict_text(result: ScanResult) -> str:
    """The verdict and its statistic in one line (with each part of a combined rule)."""
    v = result.verdict
    if v is None:
        return "no verdict"
    return f"verdict: {v.label.upper()}: {v.detail_text()}"


def scan_figure(results: ScanResult | Sequence[ScanResult]):
    """Every channel's score per layer (one row per checkpoint): flagged channels in red, each
    layer's threshold (or the network's, or the mask bound u) as a black line, the channels behind
    the verdict ringed, and the verdict statistic in the title. Returns a matplotlib Figure."""
    require_matplotlib()
    results = [results] if isinstance(results, ScanResult) else list(results)
    widest = max((len(r.layers) for r in results), default=1)
    evidence = any(r.verdict is not None and r.verdict.trigger is not None and r.verdict.sample is not None for r in results)
    width = max(8.0, min(40.0, 3.0 + 0.32 * widest))
    fig = _figure(width + (3.2 if evidence else 0.0), 4.8 * len(results))
    grid = fig.subplots(len(results), 2 if evidence else 1, squeeze=False, width_ratios=[width, 3.2] if evidence else None)
    chars = int(width * 12)
    for row, result in zip(grid, results):
        _draw_scan(row[0], result, chars)
        if evidence:
            _draw_trigger(row[1], result)
    return fig


def trigger_mosaic(verdict) -> Any:
    """The verdict's evidence as one picture (H x 3W x 3 floats in [0, 1]): a clean sample, the same
    image carrying the synthesized trigger, and the trigger itself (centred on grey, stretched to
    its largest magnitude so a faint pattern shows). None without a trigger."""
    import numpy as np

    if verdict is None or verdict.trigger is None or verdict.sample is None:
        return None
    sample = verdict.sample.detach().cpu().float()
    trigger = verdict.trigger.detach().cpu().float()
    carrying = (sample + trigger).clamp(0, 1)
    shown = 0.5 + 0.5 * trigger / trigger.abs().max().clamp_min(1e-12)
    gap = np.ones((sample.shape[1], max(1, sample.shape[2] // 16), 3))
    def rgb(t):
        a = t.permute(1, 2, 0).numpy()
        return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]
    return np.concatenate([rgb(sample), gap, rgb(carrying), gap, rgb(shown)], axis=1)


def _draw_trigger(ax: Any, result: ScanResult) -> None:
    mosaic = trigger_mosaic(result.verdict)
    ax.set_axis_off()
    if mosaic is None:
        return
    ax.imshow(mosaic, interpolation="nearest")
    v = result.verdict
    where = f"class {v.target}" if v.target is not None else "no class above the bar"
    ax.set_title(f"synthesized trigger ({where})\nclean | with trigger | trigger", fontsize=9, loc="left", parse_math=False)


def _draw_scan(ax: Any, result: ScanResult, chars: int) -> None:
    drivers = {(d["layer"], d["channel"]) for d in (result.verdict.drivers if result.verdict is not None else [])}
    xs, ys, fx, fy, dx, dy = [], [], [], [], [], []
    for i, layer in enumerate(result.layers):
        n = len(layer.scores)
        flagged = set(layer.flagged)
        for c, score in enumerate(layer.scores):
            x = i + (0.7 * (c / (n - 1) - 0.5) if n > 1 else 0.0)  # spread a layer's channels across its slot
            (fx if c in flagged else xs).append(x)
            (fy if c in flagged else ys).append(score)
            if (layer.name, c) in drivers:
                dx.append(x)
                dy.append(score)
        if result.ranking == "layer" and layer.threshold is not None and math.isfinite(layer.threshold):
            ax.hlines(layer.threshold, i - 0.42, i + 0.42, colors=THRESHOLD, linewidth=1.6, zorder=3)
    ax.scatter(xs, ys, s=9, color=CLEAN, alpha=0.55, linewidths=0, label="channel", zorder=2)
    ax.scatter(fx, fy, s=26, color=FLAGGED, label=f"flagged ({len(fx)})", zorder=4)
    if dx:
        ax.scatter(dx, dy, s=110, facecolors="none", edgecolors=DRIVER, linewidths=1.6, label="behind the verdict", zorder=5)
    global_threshold = next((layer.threshold for layer in result.layers if layer.threshold is not None), None)
    if result.ranking == "layer":
        ax.plot([], [], color=THRESHOLD, linewidth=1.6, label=f"layer threshold (u={result.u:g})")
    elif global_threshold is not None and math.isfinite(global_threshold):
        what = "mask bound" if result.ranking == "absolute" else "network threshold"
        ax.axhline(global_threshold, color=THRESHOLD, linestyle="--", linewidth=1.3, label=f"{what} (u={result.u:g})", zorder=3)
    _scale_and_label(ax, result, ys + fy)
    ax.set_xticks(range(len(result.layers)))
    ax.set_xticklabels([layer.name for layer in result.layers], rotation=90, fontsize=7, parse_math=False)
    ax.set_xlim(-0.6, len(result.layers) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    colour = "black" if result.verdict is None else (FLAGGED if result.verdict.suspicious else "#2ca02c")
    head = f"{result.checkpoint}: {result.method}, {result.flagged_total} of {result.channels_total} channels flagged"
    ax.set_title("\n".join(textwrap.wrap(head, chars) + textwrap.wrap(verdict_text(result), chars)), fontsize=10, color=colour, loc="left",
                 parse_math=False)  # a file name may hold "$", which mathtext would try to parse


def _scale_and_label(ax: Any, result: ScanResult, values: list[float]) -> None:
    """Mask values on [0, 1]; scores spanning orders of magnitude (KL, CLP bounds) on a log axis."""
    direction = "low" if result.low_is_suspicious else "high"
    if result.ranking == "absolute":
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(f"learned mask ({result.method}; flagged when <= u)" if result.low_is_suspicious else f"{result.method} score")
        return
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 1e3:
        ax.set_yscale("log")
    ax.set_ylabel(f"{result.method} score ({direction} is suspicious)")


def curve_figure(outcome: Any, *, max_acc_drop: float | None = None):
    """Clean accuracy against the number of channels pruned, from a pruning budget's curve
    (``PruneOutcome.curve``), the unpruned model at 0, the chosen point starred and the budget's
    floor dashed. Returns a matplotlib Figure."""
    require_matplotlib()
    if not outcome.curve or outcome.base_acc is None:
        raise BdpruneError("there is no accuracy curve to plot", hint="it comes from a clean-accuracy budget (--max-acc-drop)")
    by_k = outcome.k is not None
    points = sorted(outcome.curve, key=lambda p: (p.channels, -(p.u or 0.0)))
    fig = _figure(8.0, 4.8)
    ax = fig.subplots()
    xs = [0] + [p.channels for p in points]
    ys = [outcome.base_acc] + [p.acc for p in points]
    ax.plot(xs, ys, marker="o", color=CLEAN, label="clean accuracy after pruning", zorder=2)
    if not by_k:  # several u can prune the same channels: one label per distinct point
        labels: dict[tuple[int, float], list[str]] = {}
        for p in points:
            labels.setdefault((p.channels, p.acc), []).append(f"{p.u:g}")
        for i, ((x, y), us) in enumerate(labels.items()):  # alternate above and below: neighbours crowd
            ax.annotate("u=" + ", ".join(us), (x, y), textcoords="offset points", xytext=(4, 6 if i % 2 == 0 else -13), fontsize=7)
    chosen = _chosen_point(outcome, points)
    label = f"chosen: k={outcome.k}" if by_k else ("chosen: nothing pruned" if outcome.u is None else f"chosen: u={outcome.u:g}")
    ax.scatter([chosen[0]], [chosen[1]], marker="*", s=320, color=FLAGGED, zorder=4,
               label=f"{label} ({chosen[0]} channels, {chosen[1]:.2f}%)")
    if max_acc_drop is not None:
        ax.axhline(outcome.base_acc - max_acc_drop, color=THRESHOLD, linestyle="--", linewidth=1.2,
                   label=f"budget: {max_acc_drop:g} point(s) below {outcome.base_acc:.2f}%")
    ax.set_xlabel("channels pruned" + (" (top-ranked k)" if by_k else " (flagged at u)"))
    ax.set_ylabel("clean accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"{outcome.method}: clean accuracy against the pruning amount", fontsize=10, loc="left", parse_math=False)
    return fig


def _chosen_point(outcome: Any, points: list) -> tuple[int, float]:
    if outcome.k is not None:
        hit = [p for p in points if p.channels == outcome.k]
    else:
        hit = [p for p in points if outcome.u is not None and p.u == outcome.u]
    return (hit[0].channels, hit[0].acc) if hit else (0, outcome.base_acc)


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as PNG or SVG (by suffix) via a temporary file and a rename."""
    path = Path(path)
    fmt = PLOT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BdpruneError("plots are written as PNG or SVG, chosen by the file's suffix", path=path, hint="name it .png or .svg")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)


def png_base64(fig: Any) -> str:
    """``fig`` as a base64 PNG, for a data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
