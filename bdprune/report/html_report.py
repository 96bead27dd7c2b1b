"""``--format html``: one self-contained page a reviewer can attach to a ticket.

Everything is inside the file: the CSS inline, the plots as base64 PNG data URIs, and a
Content-Security-Policy that forbids loading anything else, so the page renders offline and
never reaches the network. Every string from the scan (file names, layer names) is escaped.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from rich.console import Console

from .._version import __version__
from ..checkpoint import file_sha256
from ..scoring import ScanFailure, ScanResult
from .base import REPORTERS, Reporter

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 0 auto;
       max-width: 1180px; padding: 24px; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; word-break: break-all; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: #666; margin: 0 0 16px; }
section { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 16px 20px; margin: 18px 0; }
.verdict { border-radius: 6px; padding: 12px 16px; font-size: 16px; margin: 8px 0 14px; }
.verdict strong { font-size: 20px; letter-spacing: .04em; margin-right: 10px; }
.suspicious { background: #fdecea; border: 2px solid #d62728; color: #8b1a1a; }
.clean { background: #eaf6ec; border: 2px solid #2ca02c; color: #1e6b1e; }
.unknown { background: #f0f0f0; border: 2px solid #999; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged td { background: #fdecea; font-weight: 600; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
dl.prov dt { color: #555; } dl.prov dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
figure { margin: 10px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12px; }
ul.notes { color: #555; font-size: 13px; }
footer { color: #888; font-size: 12px; margin-top: 24px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _file_sha256(path: str) -> str:
    """The file's SHA-256, or why there is none (an in-memory model, a file gone since the scan)."""
    p = Path(path)
    if not p.is_file():
        return "none: not a file (an in-memory model)" if path.startswith("<") else "none: the file is no longer there"
    return file_sha256(p)


def _verdict_block(result: ScanResult) -> str:
    v = result.verdict
    if v is None:
        return '<div class="verdict unknown"><strong>NO VERDICT</strong></div>'
    return (f'<div class="verdict {_e(v.label)}" data-verdict="{_e(v.label)}"><strong>{_e(v.label.upper())}</strong>'
            f"{_e(v.detail_text())}</div>")


def _provenance(result: ScanResult) -> str:
    data = f"{result.data} ({result.samples} samples)" if result.data else ("none (data-free)" if not result.samples else f"{result.samples} samples")
    rows = [
        ("checkpoint", result.checkpoint),
        ("SHA-256", _file_sha256(result.checkpoint)),
        ("architecture", result.arch),
        ("method", f"{result.method} ({result.method_reason}), u = {result.u:g}"),
        ("data", data),
        ("device", result.device),
        ("bdprune", result.version or __version__),
    ]
    return '<dl class="prov">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"


def _plot(result: ScanResult) -> str:
    from ..plot import png_base64, scan_figure

    encoded = png_base64(scan_figure(result))
    what = "mask value" if result.ranking == "absolute" else "score"
    alt = f"{result.method} {what} of every BatchNorm channel per layer; {result.flagged_total} flagged"
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(alt)}">'
            f"<figcaption>Every channel's {what} per layer. Red: flagged at u = {result.u:g}; black: the threshold; "
            "ringed: the channels behind the verdict.</figcaption></figure>")


def _evidence(result: ScanResult) -> str:
    """The synthesized trigger beside the clean image it was added to, as a picture (bnp's verdict)."""
    from ..plot import _figure, png_base64, trigger_mosaic

    mosaic = trigger_mosaic(result.verdict)
    if mosaic is None:
        return ""
    fig = _figure(6.0, 2.4)
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    v = result.verdict
    trig = v.components.get("trigger", {})
    caption = (f"The trigger the probe synthesized{'' if v.target is None else f' for class {v.target}'}: a clean image, the same "
               f"image carrying it, and the perturbation itself (grey = 0). It sends {trig.get('share', 0):.0%} of other clean "
               f"images to class {trig.get('class')} and explains {trig.get('explained', 0):.2f} of the BN divergence.")
    return (f'<figure><img src="data:image/png;base64,{png_base64(fig)}" alt="{_e(caption)}" style="max-width:480px">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _ranked(result: ScanResult, top: int) -> str:
    if top <= 0:
        return ""
    direction = "low" if result.low_is_suspicious else "high"
    rows = []
    for rank, (layer, channel, score, z, flagged) in enumerate(result.ranked()[:top], 1):
        rows.append(f'<tr{" class=flagged" if flagged else ""}><td class="num">{rank}</td><td>{_e(layer)}</td>'
                    f'<td class="num">{channel}</td><td class="num">{score:.4g}</td><td class="num">{z:+.2f}</td>'
                    f"<td>{'yes' if flagged else ''}</td></tr>")
    head = "<tr><th>rank</th><th>layer</th><th>channel</th><th>score</th><th>z</th><th>flagged</th></tr>"
    return (f"<h3>Top {top} channels ({_e(result.method)}: {direction} score is suspicious)</h3>"
            f'<table class="ranked">{head}{"".join(rows)}</table>')


def _layers(result: ScanResult) -> str:
    rows = "".join(
        f'<tr{" class=flagged" if layer.flagged else ""}><td>{_e(layer.name)}</td><td class="num">{len(layer.flagged)}</td>'
        f'<td class="num">{len(layer.scores)}</td><td class="num">{"-" if layer.threshold is None else f"{layer.threshold:.4g}"}</td></tr>'
        for layer in result.layers
    )
    return ("<h3>Per-layer summary</h3><table><tr><th>layer</th><th>flagged</th><th>channels</th><th>threshold</th></tr>"
            f"{rows}</table>")


def _section(result: ScanResult, top: int, index: int) -> str:
    notes = [*result.notes, *(result.verdict.notes if result.verdict is not None else [])]
    notes_html = ("<h3>Notes</h3><ul class=notes>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>") if notes else ""
    totals = (f"{result.flagged_total} of {result.channels_total} channels flagged in "
              f"{sum(1 for layer in result.layers if layer.flagged)} of {len(result.layers)} layers")
    return (f'<section id="checkpoint-{index}"><h2>{_e(result.checkpoint)}</h2>{_verdict_block(result)}'
            f"{_provenance(result)}<p>{_e(totals)}</p>{_evidence(result)}{_plot(result)}{_ranked(result, top)}{_layers(result)}"
            f"{notes_html}</section>")


def html_report(results: Sequence[ScanResult], top: int, errors: Sequence[ScanFailure] = ()) -> str:
    """The whole page: an overall verdict, then one section per checkpoint (and a list of those
    that could not be scanned)."""
    suspicious = [r for r in results if r.verdict is not None and r.verdict.suspicious]
    overall = "suspicious" if suspicious else "clean"
    summary = (f"{len(suspicious)} of {len(results)} checkpoints suspicious" if len(results) > 1
               else f"verdict: {overall}")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(_section(r, top, i) for i, r in enumerate(results))
    if errors:
        summary += f"; {len(errors)} not scanned"
        body += "<section><h2>Not scanned</h2><ul class=notes>" + "".join(f"<li>{_e(e.error)}</li>" for e in errors) + "</ul></section>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bdprune scan: {_e(summary)}</title><style>{CSS}</style></head><body>"
        f'<h1>bdprune scan report</h1><p class="sub">{_e(summary)} · bdprune {_e(__version__)} · {when}</p>'
        f"{body}<footer>Made by bdprune {_e(__version__)}. Scores, thresholds and the verdict rule are described in "
        "bdprune's README; a clean verdict is not proof that a checkpoint has no backdoor.</footer></body></html>\n"
    )


@REPORTERS.register("html")
class HtmlReporter(Reporter):
    """Writes :func:`html_report`; needs matplotlib for its plots (checked when created, so a
    missing ``bdprune[plot]`` fails before any scanning)."""

    def __init__(self) -> None:
        from ..plot import require_matplotlib

        require_matplotlib("--format html")

    def write(self, results: Sequence[ScanResult], console: Console, *, top: int, errors: Sequence[ScanFailure] = ()) -> None:  # noqa: D102
        console.file.write(html_report(results, top, errors))
