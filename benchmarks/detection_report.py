"""The detection zoo's tables (issue 22): the shipped verdict (`bdprune scan` at its defaults) on the
calibration part, where its one choice (the bar) was made, and on the evaluation part, by input
kind, attack family, poisoning rate, architecture and clean variant."""

from __future__ import annotations

import json
import platform
import statistics
from datetime import datetime, timezone

import detection_zoo as dz

BEGIN, END = "<!-- detection:begin -->", "<!-- detection:end -->"
RESULTS = dz.HERE / "RESULTS.md"


def auroc(pos: list[float], neg: list[float]) -> float:
    """P(a backdoored model's statistic > a clean one's), ties counting half."""
    if not pos or not neg:
        return float("nan")
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def rows() -> tuple[list[dict], list[dict]]:
    """(scanned models with their verdict, backdoors that did not take)."""
    out, untook = [], []
    for spec in dz.specs():
        if not dz.meta_path(spec).exists():
            continue
        meta = json.loads(dz.meta_path(spec).read_text())
        if not dz.took(meta):
            untook.append({**meta, "part": spec.part})
            continue
        if not dz.scan_path(spec).exists():
            continue
        scan = json.loads(dz.scan_path(spec).read_text())
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
            out.append(f"- {r['name']}: {v['label']} ({v['rule']} {v['statistic']:.2f}; share {trig.get('share', 0):.2f} to class "
                       f"{trig.get('class')}, explained {trig.get('explained', 0):.2f}, composition {trig.get('composition')})")
    return out


def section(all_rows: list[dict], untook: list[dict]) -> str:
    import torch

    from bdprune.verdict import TRIGGER_BAR

    n = {p: (sum(r["part"] == p and r["family"] != "clean" for r in all_rows), sum(r["part"] == p and r["family"] == "clean" for r in all_rows))
         for p in ("cal", "eval")}
    lines = [
        BEGIN,
        "## Checkpoint-level verdict on every attack family (issue 22)",
        "",
        f"- Machine: {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, one torch thread per process",
        "- Commands: `python benchmarks/detection_zoo.py train`, `scan`, `report --write`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        "The zoo (benchmarks/detection_zoo.py): five kinds of input (8x8 digits, 28x28 MNIST, 3x32x32 coloured MNIST, and",
        "100 and 1000 classes of two or three MNIST digits in the colour planes of 3x28x28 images), eleven attack families",
        "(BadNets, Blended, SIG, warp, random-position patch, low-frequency, Adaptive-Blend with cover images, an",
        "input-dependent trigger, all-to-all, two triggers for two targets, clean-label SIG) at 1%, 5% and 10%, and eight",
        "clean models per architecture (three plain seeds; imbalanced classes, 20% noisy labels, 4x longer training,",
        "shift augmentation, Adam). Every third model of each architecture is in the calibration part (`cal`), the rest",
        f"in the evaluation part (`eval`). Models here: cal {n['cal'][0]} backdoored / {n['cal'][1]} clean, eval {n['eval'][0]} / {n['eval'][1]};",
        f"{len(untook)} backdoors whose ASR stayed under {dz.ASR_TOOK:g}% are left out (listed below).",
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
    for part in ("cal", "eval"):
        lines += [f"### Part `{part}`", ""] + table(all_rows, part) + [""]
        wrong = misses(all_rows, part)
        if wrong:
            lines += [f"Wrong verdicts on `{part}`:", ""] + wrong + [""]
    if untook:
        lines += ["Backdoors that did not take (ASR under the bar; not counted): " +
                  ", ".join(f"{r['name']} ({min(r['asr']):.0f}%)" for r in untook), ""]
    lines.append(END)
    return "\n".join(lines)


def report(write: bool = False) -> None:
    all_rows, untook = rows()
    text = section(all_rows, untook)
    print(text)
    if write:
        old = RESULTS.read_text()
        new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) :] if BEGIN in old else old.rstrip("\n") + "\n\n" + text + "\n"
        RESULTS.write_text(new)


if __name__ == "__main__":
    report(write=False)
