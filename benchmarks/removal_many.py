"""`prune --repair unlearn` on the detection zoo's models (issue 23), by default its 100- and
1,000-class ones: above 100 classes the per-class probe cannot try every class, so unlearn takes
the classes the verdict's trigger probe names and runs the per-class probe on those alone; with
`--family multi --family all2all`, the several-target backdoors, where unlearn takes every class
whose persistence reaches the bar. Each rule was fixed before any of these models was pruned;
nothing here is tuned.

    python benchmarks/removal_many.py [--kind many1000] [--family multi] [--write]

Models: benchmarks/detection_zoo.py's (train them first; only those whose backdoor took, and the
clean ones). Each model is pruned as a user would: `prune MODEL --arch smallcnn --data
data/KIND_clean.npz --repair unlearn` (bnp at u = 3, 500 clean samples, 10 epochs), through the
library the CLI runs; ACC and ASR on the kind's 1,000 test images, never seen by the repair.
Success = ASR after <= 5% with ACC drop <= 2 points. Rows are cached under the zoo's cache
(removal_many/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import detection_zoo as zoo
from bdprune.repair import RepairSettings
from _report import provenance, write_section

CACHE = zoo.CACHE / "removal_many"
# The defaults; u = 1e9 (nothing pruned), as removal.py; each of these also as it ran before the BN
# running statistics were re-estimated after training (", no BN refit"); and the published
# purifications at their papers' defaults on the model as it came (benchmarks/purification.py).
_UNLEARN = {"bnp+unlearn": ({}, {}), "unlearn alone": ({"u": 1e9}, {}), "bnp+unlearn, holdout 0.2": ({}, {"holdout": 0.2}),
            "unlearn alone, holdout 0.2": ({"u": 1e9}, {"holdout": 0.2}), "bnp+unlearn, distill 1": ({}, {"distill": 1.0}),
            "bnp+unlearn, lr 0.001": ({}, {"lr": 0.001})}
VARIANTS = {f"{name}{tail}": {**prune, "repair": RepairSettings("unlearn", **settings, refit_bn=refit)}
            for name, (prune, settings) in _UNLEARN.items() for tail, refit in (("", True), (", no BN refit", False))}
VARIANTS.update({"fst": {"u": 1e9, "repair": "fst"}, "sau": {"u": 1e9, "repair": "sau"}, "nc": {"u": 1e9, "repair": "nc"}})
MANY_VARIANTS = ("bnp+unlearn", "unlearn alone")


def measure(spec: zoo.Spec, data: dict, variant: str) -> dict:
    """Prune (or not) and unlearn one model, then its ACC and ASR on the test images (cached)."""
    from safetensors.torch import load_file

    from bdprune.api import prune_checkpoint
    from bdprune.archs import build_model

    cached = CACHE / f"{spec.name}__{variant}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    meta = json.loads(zoo.meta_path(spec).read_text())
    out = CACHE / "pruned" / f"{spec.name}__{variant}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outcome = prune_checkpoint(zoo.model_path(spec), spec.arch, data=zoo.clean_npz(spec.kind), output=out, force=True, device="cpu",
                               arch_args=spec.arch_args, show_progress=False, **VARIANTS[variant])
    seconds = time.perf_counter() - t0
    state = load_file(str(out))
    model, _ = build_model(spec.arch, state, arch_args=spec.arch_args)
    model.load_state_dict(state)
    model.eval()
    with torch.inference_mode():
        acc = zoo.accuracy(model, data["test_x"], data["test_y"])
    asr = zoo.attack_success(model, spec, data) if spec.family != "clean" else []
    notes = [n for n in outcome.notes if "--repair" in n or "residual" in n or "per-class probe" in n]
    row = {"model": spec.name, "variant": variant, "kind": spec.kind, "part": spec.part, "family": spec.family, "rate": spec.rate,
           "targets": spec.targets, "acc_before": meta["acc"], "asr_before": meta["asr"], "acc_after": acc, "asr_after": asr,
           "unlearned": state_meta(out).get("unlearned_class", ""), "residual": state_meta(out).get("residual_trigger", ""),
           "seconds": seconds, "notes": notes, "metadata": state_meta(out)}
    cached.write_text(json.dumps(row))
    return row


def state_meta(path) -> dict:
    """The pruned file's text metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def report(rows: list[dict]) -> str:
    """The markdown table, one row per model, and the totals."""
    lines = ["| model | variant | part | targets | unlearned | ACC before -> after | ASR before -> after | residual | seconds |",
             "|---|---|---|---|---|---:|---:|---|---:|"]
    for r in rows:
        asr = " / ".join(f"{a:.1f} -> {b:.1f}" for a, b in zip(r["asr_before"], r["asr_after"])) or "-"
        lines.append(f"| {r['model']} | {r['variant']} | {r['part']} | {r['targets'] or '-'} | {r['unlearned'] or 'nothing'} | "
                     f"{r['acc_before']:.1f} -> {r['acc_after']:.1f} | {asr} | {r['residual'] or '-'} | {r['seconds']:.0f} |")
    lines.append("")
    for kind in sorted({r["kind"] for r in rows}):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            group = [r for r in rows if r["kind"] == kind and r["variant"] == variant]
            bad = [r for r in group if r["family"] != "clean"]
            ok = [r for r in bad if max(r["asr_after"]) <= 5.0 and r["acc_before"] - r["acc_after"] <= 2.0]
            clean = [r["acc_before"] - r["acc_after"] for r in group if r["family"] == "clean"]
            if not group:
                continue
            line = f"- {kind}, {variant}: removed (ASR <= 5%, ACC drop <= 2) {len(ok)} of {len(bad)} backdoored models"
            if bad:
                line += (f", median ASR after {statistics.median(max(r['asr_after']) for r in bad):.1f}%, median ACC drop "
                         f"{statistics.median(r['acc_before'] - r['acc_after'] for r in bad):.1f}")
            if clean:
                line += f"; clean models' ACC drop median {statistics.median(clean):.2f}, worst {max(clean):.2f} points"
            lines.append(line + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", action="append", choices=tuple(zoo.KINDS))
    p.add_argument("--family", action="append", choices=zoo.FAMILIES + ("clean",))
    p.add_argument("--variant", action="append", choices=tuple(VARIANTS), help="run only these (rows cached earlier are still shown)")
    p.add_argument("--name", action="append", help="only models whose name contains this")
    p.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in args.kind or ("many100", "many1000"):
        data = zoo.load_kind(kind)
        for spec in zoo.specs():
            if spec.kind != kind or not zoo.meta_path(spec).exists() or (args.family and spec.family not in args.family) \
                    or (args.name and not any(part in spec.name for part in args.name)):
                continue
            if not zoo.took(json.loads(zoo.meta_path(spec).read_text())):
                continue
            for variant in VARIANTS:
                if variant not in (args.variant or MANY_VARIANTS) and not (CACHE / f"{spec.name}__{variant}.json").exists():
                    continue
                row = measure(spec, data, variant)
                print(f"{row['model']} ({variant}): unlearned {row['unlearned'] or 'nothing'}, ACC {row['acc_before']:.1f} -> {row['acc_after']:.1f}, "
                      f"ASR {row['asr_before']} -> {[round(a, 1) for a in row['asr_after']]}, {row['seconds']:.0f} s", flush=True)
                rows.append(row)
    text = report(rows)
    print(text)
    if args.write:
        intro = " ".join(__doc__.split("\n\n")[0].split())
        many = all(kind.startswith("many") for kind in args.kind or ("many",))
        section, title = ("removal-many", "100 and 1,000 classes") if many else ("removal-several-targets", "several targets and all-to-all")
        write_section(section, f"## Removal on {title} (issue 23)\n\n{provenance()}\n{intro}\n\n{text}")


if __name__ == "__main__":
    main()
