"""The verdict's second calibration round (issue 22): its bars and the composition check's margin
replayed on every detection-zoo model scanned so far (parts ``cal``, ``eval`` and ``fresh``, all
looked at by now), from the candidates and class gaps their scans recorded; the rule chosen here is
frozen before the ``fresh2`` holdout is scanned.

The replay is exact: a scan records every trigger-probe candidate with its share, explained
divergence and the class make-up's (composition), and a ``--thorough`` scan every class's share
at every budget of the per-class probe, so which candidates a margin keeps, which classes the gap
counts and what the statistic becomes follow without running a model.

    python benchmarks/detection_calibrate.py [--write]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import detection_report as report
import detection_zoo as dz

from bdprune.class_probe import class_gap
from bdprune.verdict import CLASS_GAP_BAR, COMPOSITION_MARGIN, GAP_MIN_EXPLAINED, TRIGGER_BAR, composition_explains, gap_classes

POOL = ("cal", "eval", "fresh")
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1)
TRIGGER_BARS = (0.6, 0.65, 0.7, 0.75)
GAP_BARS = (0.5, 0.55, 0.6, 0.75)
GAP_MIN = (None, 0.02, 0.05, 0.1)  # None: every class the trigger probe named, as the first round had it


def candidates(verdict: dict) -> list[SimpleNamespace]:
    """The trigger probe's recorded candidates, with the attribute names of bdprune.probe.Candidate."""
    found = verdict["components"].get("trigger", {}).get("candidates", [])
    return [SimpleNamespace(target=c["class"], share=c["share"], explained=c["explained"], composition=c["composition"]) for c in found]


def share(verdict: dict, margin: float) -> float:
    """The largest trigger share among the candidates the composition check keeps at ``margin``."""
    return max((c.share for c in candidates(verdict) if not composition_explains(c, margin)), default=0.0)


def gap(verdict: dict, min_explained: float | None) -> float:
    """The class gap over the classes of the candidates that explain at least ``min_explained``
    (None: every class a candidate names)."""
    classes = gap_classes(candidates(verdict), float("-inf") if min_explained is None else min_explained)
    return class_gap(SimpleNamespace(per_budget=verdict["components"]["class_gap"]["shares"]), classes)[0]


def statistic(verdict: dict, choice: tuple) -> float:
    """The verdict's statistic under ``choice`` = (margin, trigger bar, gap bar, gap's minimum
    explained share); gap bar None: the default rule, no class gap."""
    margin, trigger_bar, gap_bar, min_explained = choice
    value = share(verdict, margin) / trigger_bar
    return value if gap_bar is None else max(value, gap(verdict, min_explained) / gap_bar)


def pool(thorough: bool) -> list[dict]:
    """The pool's scanned models: their verdicts from the --thorough scans, or from the default ones."""
    return [r for r in report.rows(thorough)[0] if r["part"] in POOL and (not thorough or r["kind"] in dz.THOROUGH_KINDS)]


def grid_line(rows: list[dict], choice: tuple, chosen: tuple) -> str:
    values = [(r, statistic(r["verdict"], choice)) for r in rows]
    bd = [v for r, v in values if r["family"] != "clean"]
    cl = [v for r, v in values if r["family"] == "clean"]
    low = [v for r, v in values if r["family"] != "clean" and r["rate"] == 0.01]
    margin, trigger_bar, gap_bar, min_explained = choice
    mark = "**" if choice == chosen else ""
    cells = [f"{margin:g}", f"{trigger_bar:g}", "-" if gap_bar is None else f"{gap_bar:g}", "-" if min_explained is None else f"{min_explained:g}"]
    return (f"| {' | '.join(f'{mark}{c}{mark}' for c in cells)} | {sum(v > 1 for v in bd)}/{len(bd)} | {sum(v > 1 for v in cl)}/{len(cl)} | "
            f"{report.auroc(bd, cl):.3f} | {sum(v > 1 for v in low)}/{len(low)} |")


def choices(thorough: bool) -> tuple[tuple, list[tuple]]:
    """The shipped choice and the grid around it: each setting varied with the others at the shipped values."""
    chosen = (COMPOSITION_MARGIN, TRIGGER_BAR, CLASS_GAP_BAR if thorough else None, GAP_MIN_EXPLAINED if thorough else None)
    grid = [(m, TRIGGER_BAR, chosen[2], chosen[3]) for m in MARGINS] + [(chosen[0], t, chosen[2], chosen[3]) for t in TRIGGER_BARS]
    if thorough:
        grid += [(chosen[0], TRIGGER_BAR, g, e) for e in GAP_MIN for g in GAP_BARS]
    return chosen, list(dict.fromkeys(grid))


def section() -> str:
    begin, end = report.markers("detection-recalibration")
    lines = [begin, "## The verdict's second calibration round (issue 22)", "",
             "- Command: `python benchmarks/detection_calibrate.py --write` (replays the cached scans; no model runs)",
             "",
             "Every model scanned so far (`cal`, `eval` and `fresh` of the detection zoo) replayed under other choices of the",
             "composition check's margin (a candidate is set aside when the class make-up explains the BN divergence within",
             "the margin of what it does), the trigger share's bar and the class gap's bar. The replay is exact: each scan",
             "recorded every candidate, and the `--thorough` scans (rerun for this round) every class's share at every budget.",
             "Chosen (bold), each setting with the others at their chosen values:",
             "",
             "- the margin: the smallest step of 0.01 that sets aside the two clean imbalanced models `fresh` flagged (their",
             "  composition fell 0.003 and 0.027 short of the candidate's explained share); 1 backdoor is lost with them;",
             "- the trigger bar kept at 0.7 (with that margin the largest clean share is 0.66);",
             "- the class gap counts only the classes of candidates that explain at least 0.05 of the divergence: the largest",
             "  clean gap (0.71, an Adam-trained calibration CNN) came from a class whose candidate explained 0.006; from 0.02",
             "  to 0.1 the largest clean gap is 0.475 and no backdoor is lost;",
             "- the gap bar: at least 0.05 above that clean maximum, in steps of 0.05: 0.55 (was 0.75).",
             "",
             "Frozen before any `fresh2` model was scanned.", ""]
    for thorough in (False, True):
        rows = pool(thorough)
        lines += [f"### {'`--thorough`, 10-class kinds' if thorough else 'Default rule, every kind'} ({len(rows)} models)", "",
                  "| margin | trigger bar | gap bar | gap's min. explained | backdoored caught | clean flagged | AUROC | 1% caught |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        chosen, grid = choices(thorough)
        lines += [grid_line(rows, choice, chosen) for choice in grid]
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
