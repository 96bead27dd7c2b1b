"""The detection zoo's tables (issue 22): the shipped verdict (`bdprune scan` at its defaults, or
with `--thorough`) on the calibration part, where its choices were made, on the evaluation part
and on the fresh holdout, by input kind, attack family, poisoning rate, architecture and clean
variant."""

from __future__ import annotations

import json
import platform
import statistics
from datetime import datetime, timezone

import detection_zoo as dz

PARTS = dz.PARTS


RESULTS = dz.HERE / "RESULTS.md"


def tag(thorough: bool) -> str:
    return "detection-thorough" if thorough else "detection"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(text: str, name: str) -> None:
    """Put ``text`` between the ``name`` markers of benchmarks/RESULTS.md (appended when absent)."""
    begin, end = markers(name)
    old = RESULTS.read_text()
    new = old[: old.index(begin)] + text + old[old.index(end) + len(end) :] if begin in old else old.rstrip("\n") + "\n\n" + text + "\n"
    RESULTS.write_text(new)


def auroc(pos: list[float], neg: list[float]) -> float:
    """P(a backdoored model's statistic > a clean one's), ties counting half."""
    if not pos or not neg:
        return float("nan")
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def rows(thorough: bool = False) -> tuple[list[dict], list[dict]]:
    """(scanned models with their verdict, backdoors that did not take)."""
    out, untook = [], []
    for spec in dz.specs():
        if not dz.meta_path(spec).exists():
            continue
        meta = json.loads(dz.meta_path(spec).read_text())
        if not dz.took(meta):
            untook.append({**meta, "part": spec.part})
            continue
        if not dz.scan_path(spec, thorough).exists():
            continue
        scan = json.loads(dz.scan_path(spec, thorough).read_text())
        out.append({**meta, "part": spec.part, "verdict": scan["verdict"], "seconds": scan["seconds"]})
    return out, untook


def _line(label: str, sel: list[dict]) -> str | None:
    bd = [r for r in sel if r["family"] != "clean"]
    cl = [r for r in sel if r["family"] == "clean"]
    if not sel:
        return None
    caught = [r for r in bd if r["verdict"]["suspicious"]]
    flagged = [r for r in cl if r["verdict"]["suspicious"]]
    right = [r for r in caught if r["targets"] == "all" or r["verdict"]["target"] in r["targets"]]
    every = [r for r in caught if r["targets"] != "all" and len(r["targets"]) > 1 and set(r["targets"]) <= set(r["verdict"]["targets"])]
    multi = sum(1 for r in caught if r["targets"] != "all" and len(r["targets"]) > 1)
    au = auroc([r["verdict"]["statistic"] for r in bd], [r["verdict"]["statistic"] for r in cl])
    cost = statistics.median(r["seconds"] for r in sel)
    return (f"| {label} | {len(caught)}/{len(bd)} | {len(flagged)}/{len(cl)} | {'-' if au != au else f'{au:.3f}'} | "
            f"{len(right)}/{len(caught)}{f' (both targets {len(every)}/{multi})' if multi else ''} | {cost:.1f} |")


def table(all_rows: list[dict], part: str) -> list[str]:
    sel = [r for r in all_rows if r["part"] == part]
    lines = ["| group | backdoored caught | clean flagged | AUROC | target right (of caught) | median s |", "|---|---:|---:|---:|---:|---:|"]
    groups = [("all", lambda r: True)]
    groups += [(f"kind={k}", (lambda k: lambda r: r["kind"] == k)(k)) for k in dz.KINDS]
    groups += [(f"family={f}", (lambda f: lambda r: r["family"] == f)(f)) for f in dz.FAMILIES]
    groups += [(f"rate={rate:.0%}", (lambda x: lambda r: r["family"] != "clean" and abs(r["rate"] - x) < 1e-9)(rate)) for rate in (*dz.RATES, 0.08)]
    groups += [(f"arch={a}{w}", (lambda a, w: lambda r: r["arch"] == a and r["width"] == w)(a, w))
               for a, w in sorted({(r["arch"], r["width"]) for r in sel})]
    groups += [(f"clean={v}", (lambda v: lambda r: r["family"] == "clean" and r["variant"] == v)(v)) for v in dz.CLEAN_VARIANTS]
    for label, pred in groups:
        line = _line(label, [r for r in sel if pred(r)])
        if line is not None:
            lines.append(line)
    return lines


def misses(all_rows: list[dict], part: str) -> list[str]:
    out = []
    for r in all_rows:
        if r["part"] != part:
            continue
        v = r["verdict"]
        wrong = v["suspicious"] == (r["family"] == "clean")
        if wrong:
            trig = v["components"].get("trigger", {})
            gap = v["components"].get("class_gap")
            gap_text = "" if gap is None else f"; class gap {gap['value']:.2f} for class {gap['class']}"
            out.append(f"- {r['name']}: {v['label']} ({v['rule']} {v['statistic']:.2f}; share {trig.get('share', 0):.2f} to class "
                       f"{trig.get('class')}, explained {trig.get('explained', 0):.2f}, composition {trig.get('composition')}{gap_text})")
    return out


FRESH = ("The fresh holdout (`fresh`): the digits8, mnist28 and cmnist32 models again from new seeds (new weights,",
         "new targets), trained after every choice above was frozen; no model of it was looked at before its scan.",
         "After it, a second calibration round on `cal`, `eval` and `fresh` together (benchmarks/detection_calibrate.py,",
         "\"The verdict's second calibration round\") set the composition check's margin (and `--thorough`'s gap);",
         "every part was rescanned with them. The second fresh holdout (`fresh2`): the same kinds again from newer",
         "seeds, trained while that round ran and scanned only after it froze the rule; no choice was made on it.",
         "The rescans of `cal`, `eval` and `fresh` ran beside other jobs, so their median seconds are not costs; `fresh2`",
         "ran as the first scans did, two processes on the two cores. The third fresh holdout (`fresh3`): the same kinds",
         "again from newer seeds, scanned with the same rule, unchanged since it was frozen before `fresh2`; a second",
         "measurement of it on models no choice saw. The two together are shown as `fresh2+fresh3`.")
HOLDOUTS = ("fresh2", "fresh3")  # the second round's rule, measured twice


def section(all_rows: list[dict], untook: list[dict], thorough: bool = False) -> str:
    import torch

    from bdprune.verdict import CLASS_GAP_BAR, GAP_MIN_EXPLAINED, TRIGGER_BAR

    begin, end = markers(tag(thorough))
    parts = [p for p in PARTS if any(r["part"] == p for r in all_rows)]
    n = {p: (sum(r["part"] == p and r["family"] != "clean" for r in all_rows), sum(r["part"] == p and r["family"] == "clean" for r in all_rows))
         for p in parts}
    counts = ", ".join(f"{p} {n[p][0]} backdoored / {n[p][1]} clean" for p in parts)
    lines = [
        begin,
        "## Checkpoint-level verdict with `--thorough` (issue 22)" if thorough else "## Checkpoint-level verdict on every attack family (issue 22)",
        "",
        f"- Machine: {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, one torch thread per process",
        f"- Commands: `python benchmarks/detection_zoo.py train`, `scan{' --thorough' if thorough else ''}`; `python benchmarks/detection_report.py --write{' --thorough' if thorough else ''}`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
    ]
    if thorough:
        lines += [
            "`bdprune scan MODEL --arch A --data CLEAN --thorough` on the 10-class kinds of the same zoo (the per-class probe",
            "takes minutes a model on 100 classes here, so the many-class kinds are not measured). The verdict is the default",
            "one (below) plus the class gap: the per-class probe of `--repair unlearn` (bdprune/class_probe.py; per class one",
            "shared perturbation towards it, 3 L2 and 5 L1 budgets, 5 steps each, 32 images) and the largest lead a class the",
            f"trigger probe's candidates name (those explaining at least {GAP_MIN_EXPLAINED:g} of the BN divergence) takes over",
            f"every other class at one budget; suspicious when the trigger share exceeds {TRIGGER_BAR:g} or the class gap exceeds {CLASS_GAP_BAR:g}. The first round",
            "chose on `cal` only: restricting the gap to the trigger probe's classes (AUROC 0.941 against 0.919 for any class,",
            "in an exploratory run, not kept, on 34 of the calibration models) and a bar of 0.75 (above the largest class gap",
            "of a clean calibration model, 0.71); `eval` and `fresh` were scanned with `--thorough` only after it was frozen.",
            "The second round (on `cal`, `eval` and `fresh`) counted only the classes of candidates explaining some of the",
            f"divergence and lowered the bar to {CLASS_GAP_BAR:g}.",
            *FRESH,
            f"Models here: {counts}; {len(untook)} backdoors whose ASR stayed under {dz.ASR_TOOK:g}% are left out.",
            "",
        ]
    else:
        lines += [
            "The zoo (benchmarks/detection_zoo.py): five kinds of input (8x8 digits, 28x28 MNIST, 3x32x32 coloured MNIST, and",
            "100 and 1000 classes of two or three MNIST digits in the colour planes of 3x28x28 images), eleven attack families",
            "(BadNets, Blended, SIG, warp, random-position patch, low-frequency, Adaptive-Blend with cover images, an",
            "input-dependent trigger, all-to-all, two triggers for two targets, clean-label SIG) at 1%, 5% and 10%, and eight",
            "clean models per architecture (three plain seeds; imbalanced classes, 20% noisy labels, 4x longer training,",
            "shift augmentation, Adam). Every third model of each architecture is in the calibration part (`cal`), the rest",
            "in the evaluation part (`eval`).",
            *FRESH,
            f"Models here: {counts}; {len(untook)} backdoors whose ASR stayed under {dz.ASR_TOOK:g}% are left out (listed below).",
            "",
            "The verdict is `bdprune scan MODEL --arch A --data CLEAN` at its defaults: bnp's statistics pass over the 300-500",
            "clean samples, then the trigger probe (bdprune/probe.py; 32 images to optimize on, 64 to judge on, a dense L2 0.2",
            "and a sparse L1 0.05 budget, 9 Adam steps each), suspicious when the largest share of the judged images one",
            f"synthesized trigger sends to one class, among the triggers not explained by the class make-up, exceeds {TRIGGER_BAR:g}.",
            "What was chosen on the calibration part: the probe's design (divergence matching, its budgets and steps; looked",
            "at on digits8, mnist28 and cmnist32 calibration models only), the composition check (added after a clean",
            "imbalanced cmnist32 calibration model scored 0.84) and the bar (above the calibration clean maximum after that",
            "check, 0.64). The many-class kinds were not trained yet when the rule was frozen: their calibration models are",
            "as unseen as the evaluation ones. No evaluation model was scanned before the rule was frozen.",
            "",
        ]
    if all(p in parts for p in HOLDOUTS):
        together = "+".join(HOLDOUTS)
        all_rows = all_rows + [{**r, "part": together} for r in all_rows if r["part"] in HOLDOUTS]
        parts.append(together)
    for part in parts:
        lines += [f"### Part `{part}`", ""] + table(all_rows, part) + [""]
        wrong = misses(all_rows, part) if part in PARTS else []  # the combined holdouts repeat their parts' lists
        if wrong:
            lines += [f"Wrong verdicts on `{part}`:", ""] + wrong + [""]
    if untook and not thorough:
        lines += ["Backdoors that did not take (ASR under the bar; not counted): " +
                  ", ".join(f"{r['name']} ({min(r['asr']):.0f}%)" for r in untook), ""]
    lines.append(end)
    return "\n".join(lines)


def report(write: bool = False, thorough: bool = False) -> None:
    all_rows, untook = rows(thorough)
    if thorough:
        untook = [r for r in untook if r["kind"] in dz.THOROUGH_KINDS]
    text = section(all_rows, untook, thorough)
    print(text)
    if write:
        write_section(text, tag(thorough))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    parser.add_argument("--thorough", action="store_true", help="the `scan --thorough` scans (detection_zoo.py scan --thorough)")
    args = parser.parse_args()
    report(write=args.write, thorough=args.thorough)
