"""The verdict's second calibration round (issue 22): its bars and the composition check's margin
replayed on every detection-zoo model scanned so far (parts ``cal``, ``eval`` and ``fresh``, all
looked at by now), from the candidates and class gaps their scans recorded; the rule chosen here is
frozen before the ``fresh2`` holdout is scanned.

The replay is exact: a scan records every trigger-probe candidate with its share, explained
divergence and the class make-up's (composition), and the class gap, so which candidates a margin
keeps and what the statistic becomes follow without running a model.

    python benchmarks/detection_calibrate.py [--write]
"""

from __future__ import annotations

import argparse

import detection_report as report
import detection_zoo as dz

from bdprune.verdict import CLASS_GAP_BAR, COMPOSITION_MARGIN, TRIGGER_BAR

POOL = ("cal", "eval", "fresh")
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1)
TRIGGER_BARS = (0.6, 0.65, 0.7, 0.75)
GAP_BARS = (0.5, 0.6, 0.72, 0.75)


def share(verdict: dict, margin: float) -> float:
    """The largest trigger share among the candidates the composition check keeps at ``margin``."""
    cands = verdict["components"].get("trigger", {}).get("candidates", [])
    return max((c["share"] for c in cands if c["composition"] is None or c["composition"] < c["explained"] - margin), default=0.0)


def statistic(verdict: dict, margin: float, trigger_bar: float, gap_bar: float | None) -> float:
    """The verdict's statistic under these choices (``gap_bar`` None: the default rule, no class gap)."""
    value = share(verdict, margin) / trigger_bar
    gap = verdict["components"].get("class_gap")
    return value if gap_bar is None or gap is None else max(value, gap["value"] / gap_bar)


def pool(thorough: bool) -> list[dict]:
    """The pool's scanned models: their verdicts from the --thorough scans, or from the default ones."""
    return [r for r in report.rows(thorough)[0] if r["part"] in POOL and (not thorough or r["kind"] in dz.THOROUGH_KINDS)]


def grid_line(rows: list[dict], margin: float, trigger_bar: float, gap_bar: float | None) -> str:
    bd = [statistic(r["verdict"], margin, trigger_bar, gap_bar) for r in rows if r["family"] != "clean"]
    cl = [statistic(r["verdict"], margin, trigger_bar, gap_bar) for r in rows if r["family"] == "clean"]
    low = [statistic(r["verdict"], margin, trigger_bar, gap_bar) for r in rows if r["family"] != "clean" and r["rate"] == 0.01]
    chosen = margin == COMPOSITION_MARGIN and trigger_bar == TRIGGER_BAR and gap_bar in (None, CLASS_GAP_BAR)
    mark = "**" if chosen else ""
    return (f"| {mark}{margin:g}{mark} | {trigger_bar:g} | {'-' if gap_bar is None else f'{gap_bar:g}'} | "
            f"{sum(v > 1 for v in bd)}/{len(bd)} | {sum(v > 1 for v in cl)}/{len(cl)} | {report.auroc(bd, cl):.3f} | "
            f"{sum(v > 1 for v in low)}/{len(low)} |")


def section() -> str:
    begin, end = report.markers("detection-recalibration")
    lines = [begin, "## The verdict's second calibration round (issue 22)", "",
             "- Command: `python benchmarks/detection_calibrate.py --write` (replays the cached scans; no model runs)",
             "",
             "Every model scanned so far (`cal`, `eval` and `fresh` of the detection zoo) replayed under other choices of the",
             "composition check's margin (a candidate is set aside when the class make-up explains the BN divergence within",
             "the margin of what it does), the trigger share's bar and the class gap's bar. The replay is exact: each scan",
             "recorded every candidate and the class gap. Chosen (bold): the margin that sets aside the two clean imbalanced",
             "models `fresh` flagged (their composition fell 0.003 and 0.027 short of the candidate's explained share), the",
             "bars kept (with that margin the largest clean share is 0.66, under 0.7; the largest clean class gap is still",
             "the calibration Adam model's 0.71, so 0.75 stays). Frozen before any `fresh2` model was scanned.", ""]
    for thorough in (False, True):
        rows = pool(thorough)
        lines += [f"### {'`--thorough`, 10-class kinds' if thorough else 'Default rule, every kind'} ({len(rows)} models)", "",
                  "| margin | trigger bar | gap bar | backdoored caught | clean flagged | AUROC | 1% caught |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for margin in MARGINS:
            for trigger_bar in TRIGGER_BARS:
                for gap_bar in (GAP_BARS if thorough else (None,)):
                    if trigger_bar == TRIGGER_BAR or margin == COMPOSITION_MARGIN:
                        lines.append(grid_line(rows, margin, trigger_bar, gap_bar))
        lines.append("")
    lines.append(end)
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    text = section()
    print(text)
    if parser.parse_args().write:
        report.write_section(text, "detection-recalibration")
