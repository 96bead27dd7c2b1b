"""Compare candidate checkpoint-level statistics on a zoo's saved scans (AUROC, clean maxima).

Run after `python benchmarks/run.py zoo`: `python benchmarks/verdict_calibration.py [CACHE_DIR]`
(default benchmarks/cache; benchmarks/cache/epochs8 for the zoo trained 8 epochs). Prints one
line per method and statistic, then how the shipped rule (bdprune.verdict.RULES) does on it.
Statistics: maxrz = largest per-layer robust z (median/MAD); maxraw = largest raw score (EP: lowest
entropy, negated); maxz = largest per-layer z; maxlogrz = robust z of log scores; medrz = median over
layers of each layer's largest robust z. Backdoored models whose attack did not take are left out.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from zoo import ASR_TOOK

from bdprune.verdict import MIN_CHANNELS, RULES, robust_z


def auroc(positives: list[float], negatives: list[float]) -> float:
    """P(a backdoored model's statistic > a clean one's), ties counting half."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    return sum(pairs) / len(pairs)


def candidates(scan: dict) -> dict[str, float]:
    """Every candidate statistic of one saved scan."""
    low = scan["low_is_suspicious"]
    rz, log_rz, raw = [], [], []
    for layer in scan["layers"]:
        s = layer["scores"]
        if len(s) < MIN_CHANNELS:
            continue
        rz.append(max(robust_z(s, low)))
        if not low:
            log_rz.append(max(robust_z([math.log(max(x, 1e-12)) for x in s], False)))
        raw.append(-min(s) if low else max(s))
    out = {"maxrz": max(rz), "maxraw": max(raw), "maxz": max(max(layer["z"]) for layer in scan["layers"]), "medrz": statistics.median(rz)}
    if log_rz:
        out["maxlogrz"] = max(log_rz)
    return out


def main(cache: Path) -> None:
    models = {d["name"]: d for d in (json.loads(p.read_text()) for p in (cache / "models").glob("*.json"))}
    for method in RULES:
        rows = []
        for path in sorted((cache / "scans").glob(f"*__{method}.json")):
            info = models[path.name.split("__")[0]]
            if info["attack"] != "clean" and (info["asr"] or 0) < ASR_TOOK:
                continue
            scan = json.loads(path.read_text())
            rows.append((info["attack"] != "clean", candidates(scan), scan.get("verdict", {}).get("label")))
        if not rows:
            continue
        for key in rows[0][1]:
            pos = [r[1][key] for r in rows if r[0]]
            neg = [r[1][key] for r in rows if not r[0]]
            print(f"{method} {key}: AUROC {auroc(pos, neg):.2f}, clean max {max(neg):.3g}, backdoored min {min(pos):.3g}, median {statistics.median(pos):.3g}")
        caught = sum(r[2] == "suspicious" for r in rows if r[0])
        alarms = sum(r[2] == "suspicious" for r in rows if not r[0])
        rule, threshold = RULES[method]
        print(f"{method} shipped rule {rule} > {threshold:g}: {caught}/{sum(r[0] for r in rows)} backdoored caught, "
              f"{alarms}/{sum(not r[0] for r in rows)} clean flagged")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "cache")
