"""Backdoor removal on the zoo (issue 13): every removal variant side by side, prune (and repair)
through bdprune's library exactly as the CLI runs it, on the clean samples only.

    python benchmarks/run.py removal                      # holdout part, every variant -> RESULTS.md
    python benchmarks/run.py removal --part tune          # tune part (prints; where choices are made)
    python benchmarks/run.py removal --variants rnp,anp   # a subset (prints)
    python benchmarks/run.py removal --cached-only        # rewrite the report from cached rows
    python benchmarks/run.py removal --timing --threads 2 # learned-mask cost on a CIFAR ResNet-18

Models: the zoo trained ``zoo.REMOVAL_EPOCHS`` epochs (benchmarks/zoo.py; train it first with
``python benchmarks/run.py zoo --train-only --epochs 8``). Each (model, variant) is cached under
the zoo's cache (removal/); delete it to re-measure. Success = ASR after <= 5% with ACC drop <= 2
points on the 1,500 test images; the clean samples (500, never trained on) are all a variant sees.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

import zoo

EPOCHS = 8
# name -> prune_checkpoint settings. Every amount is fixed in advance or chosen on the clean
# samples (a budget); nothing here looks at poisoned or test data.
VARIANTS: dict[str, dict] = {
    "bnp": dict(method="bnp"),
    "bnp+": dict(method="bnp+"),
    "anp-150": dict(method="anp", method_args={"iterations": "150"}),
    "rnp": dict(method="rnp"),
    "rnp-budget": dict(method="rnp", max_acc_drop=1.0),  # the k lowest masks within 1 point of clean-sample ACC
    "finetune": dict(method="bnp", u=1e9, repair="finetune"),  # u = 1e9 flags nothing: fine-tuning alone
    "rnp+finetune": dict(method="rnp", repair="finetune"),
    "unlearn": dict(method="bnp", u=1e9, repair="unlearn"),  # no pruning: unlearning the probe's trigger alone
    "bnp+unlearn": dict(method="bnp", repair="unlearn"),  # `prune --repair unlearn` at its defaults (recommended)
}


def cache_dir() -> Path:
    return zoo.zoo_dir(EPOCHS) / "removal"


def forward_seconds(spec: zoo.ModelSpec) -> float:
    """Seconds of one bare forward pass over the 500 clean samples (batch 128): the cost unit."""
    from bdprune.data import load_images
    from bdprune.evaluate import predict
    from bdprune.scan import load_model

    model = load_model(zoo.model_path(spec), spec.arch, arch_args=zoo.ARCH_ARGS).model
    images = load_images(zoo.CACHE / "clean.npz").images
    predict(model, images[:128], device=torch.device("cpu"), batch_size=128)  # warm-up
    t0 = time.perf_counter()
    predict(model, images, device=torch.device("cpu"), batch_size=128)
    return time.perf_counter() - t0


def measure(spec: zoo.ModelSpec, meta: dict, name: str, unit: float) -> dict:
    """Prune (and repair) one model with one variant, evaluate it, return the row (cached)."""
    from bdprune.api import prune_checkpoint
    from bdprune.repair import RepairSettings

    cached = cache_dir() / f"{spec.name}__{name}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    v = dict(VARIANTS[name])
    repair = RepairSettings(v.pop("repair", "none"))
    out = cache_dir() / "pruned" / f"{spec.name}__{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outcome = prune_checkpoint(
        zoo.model_path(spec), spec.arch, data=zoo.CACHE / "clean.npz", samples=zoo.N_CLEAN, output=out, force=True,
        device="cpu", arch_args=zoo.ARCH_ARGS, show_progress=False, repair=repair, **v,
    )
    seconds = time.perf_counter() - t0
    acc, asr = zoo.evaluate(out, spec)
    row = {
        "model": spec.name, "part": spec.part, "arch": spec.arch, "attack": spec.attack, "rate": spec.rate,
        "variant": name, "acc_before": meta["acc"], "asr_before": meta["asr"], "acc_after": acc, "asr_after": asr,
        "pruned": sum(map(len, outcome.channels.values())), "channels": outcome.channels_total,
        "seconds": seconds, "forward_equivalents": seconds / unit, "repair_acc": outcome.repair_acc,
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(row))
    return row


def _med(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def _f(v, digits=1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def report(rows: list[dict], names: list[str]) -> str:
    """Per variant: success, median ASR after, clean models' ACC drop, cost; then by attack/arch/rate."""
    took = lambda r: zoo.backdoor_took({**r, "asr_before": r["asr_before"]})  # noqa: E731
    lines = [
        "| variant | backdoored: success (ASR <= 5%, ACC drop <= 2) | ASR <= 5% at any ACC cost | median ASR after | "
        "median ACC drop (backdoored) | clean models: ACC drop median (max) | channels pruned, median | "
        "cost: median s (forward-pass equivalents) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        sel = [r for r in rows if r["variant"] == name]
        bd = [r for r in sel if took(r)]
        clean = [r for r in sel if r["attack"] == "clean"]
        ok = sum(zoo.succeeded(r) for r in bd)
        gone = sum(r["asr_after"] <= zoo.SUCCESS_ASR for r in bd)
        drops = [r["acc_before"] - r["acc_after"] for r in clean]
        lines.append(
            f"| {name} | {ok}/{len(bd)} ({100 * ok / max(len(bd), 1):.0f}%) | {gone}/{len(bd)} | "
            f"{_f(_med(r['asr_after'] for r in bd))} | {_f(_med(r['acc_before'] - r['acc_after'] for r in bd), 2)} | "
            f"{_f(_med(drops), 2)} ({_f(max(drops) if drops else None, 2)}) | {_f(_med(r['pruned'] for r in sel), 0)} | "
            f"{_f(_med(r['seconds'] for r in sel))} ({_f(_med(r['forward_equivalents'] for r in sel), 0)}) |"
        )
    groups = [("attack", a) for a in sorted({r["attack"] for r in rows} - {"clean"})]
    groups += [("arch", a) for a in sorted({r["arch"] for r in rows})]
    groups += [("rate", x) for x in sorted({r["rate"] for r in rows} - {0.0})]
    lines += ["", "Success by group (backdoored models that took; success / n, then median ASR after):", "",
              "| group | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, value in groups:
        cells = []
        for name in names:
            sel = [r for r in rows if r["variant"] == name and r[key] == value and took(r)]
            cells.append(f"{sum(zoo.succeeded(r) for r in sel)}/{len(sel)}, {_f(_med(r['asr_after'] for r in sel))}")
        label = f"{value:.0%}" if key == "rate" else value
        lines.append(f"| {key}={label} | " + " | ".join(cells) + " |")
    lines += ["", "Every model (ACC / ASR after; before in the first column):", "",
              "| model | before | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    by = {(r["model"], r["variant"]): r for r in rows}
    for model in sorted({r["model"] for r in rows}):
        first = next(by[(model, n)] for n in names if (model, n) in by)
        cells = [f"{_f(by[(model, n)]['acc_after'], 2)} / {_f(by[(model, n)]['asr_after'])}" if (model, n) in by else "-" for n in names]
        lines.append(f"| {model} | {_f(first['acc_before'], 2)} / {_f(first['asr_before'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing(threads: int) -> str:
    """Seconds per step of anp, per epoch of rnp and of --repair unlearn (plus its class probe) on the paper's CIFAR ResNet-18 (width 64,
    32x32 RGB) with 500 samples, extrapolated to their defaults. The weights are untrained:
    the cost of a step does not depend on them."""
    from bdprune.archs import build_model
    from bdprune.data import ImageSet
    from bdprune.methods import METHODS, ScoreContext

    torch.manual_seed(0)
    model, _ = build_model("resnet18", None, arch_args={"width": "64", "in_channels": "3"})
    data = ImageSet(torch.rand(500, 3, 32, 32), torch.randint(0, 10, (500,)), Path("random.npz"))
    ctx = lambda: ScoreContext(model=model, stats=None, device=torch.device("cpu"), data=data)  # noqa: E731
    t0 = time.perf_counter()
    METHODS.get("anp")({"iterations": "10"}).score(ctx())
    anp = (time.perf_counter() - t0) / 10
    t0 = time.perf_counter()
    METHODS.get("rnp")({"unlearn_epochs": "0", "stop_acc": "1", "recover_epochs": "2"}).score(ctx())
    rnp = (time.perf_counter() - t0) / 3  # one unlearning epoch + two recovery epochs
    from bdprune.repair import RepairSettings, find_triggers, repair_model

    t0 = time.perf_counter()
    find_triggers(model, data, device=torch.device("cpu"))  # the class probe and the explained shares
    probe = time.perf_counter() - t0
    t0 = time.perf_counter()
    repair_model(model, {}, ("weight",), None, data, RepairSettings("unlearn", epochs=1), device=torch.device("cpu"),
                 triggers=[torch.rand(3, 32, 32) * 0.1])
    unlearn_epoch = time.perf_counter() - t0
    return "\n".join([
        f"torch threads {threads}; resnet18 width 64 (11.2M parameters), 500 samples of 3x32x32, CPU:",
        f"- anp: {anp:.2f} s per iteration -> {2000 * anp / 60:.0f} min at the default 2000 iterations, "
        f"{150 * anp / 60:.1f} min at 150",
        f"- rnp: {rnp:.1f} s per epoch over the 500 samples -> {21 * rnp / 60:.1f} min when unlearning stops after one epoch "
        f"(21 epochs), {41 * rnp / 60:.1f} min at most (41 epochs)",
        f"- --repair unlearn: class probe and explained shares {probe:.0f} s (untrained weights: how many candidates reach "
        f"the explained step varies), {unlearn_epoch:.1f} s per epoch over the 500 samples and their triggered copies -> "
        f"{(probe + 10 * unlearn_epoch) / 60:.1f} min at the default 10 epochs",
    ])


def run(args) -> None:
    from _report import provenance, write_section

    torch.set_num_threads(args.threads)
    if args.timing:
        body = ("## Learned-mask cost on the paper's CIFAR ResNet-18 (issue 13)\n\n" + provenance("cpu")
                + f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.\n\n" + timing(args.threads) + "\n")
        write_section("removal-timing", body)
        print(body)
        return
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    specs = [s for s in zoo.zoo_specs(EPOCHS) if s.part == args.part and (not args.arch or s.arch in args.arch)]
    missing = [s.name for s in specs if not zoo.model_path(s).with_suffix(".json").exists()]
    if missing:  # measure what is trained; the report names the rest
        print(f"not trained yet (python benchmarks/run.py zoo --train-only --epochs {EPOCHS}): {', '.join(missing)}")
    specs = [s for s in specs if s.name not in missing]
    metas = {s.name: json.loads(zoo.model_path(s).with_suffix(".json").read_text()) for s in specs}
    rows = []
    for s in specs:
        if args.cached_only:  # report what earlier runs measured; a model missing a variant is left out
            cached = [cache_dir() / f"{s.name}__{name}.json" for name in names]
            if all(p.exists() for p in cached):
                rows += [json.loads(p.read_text()) for p in cached]
            else:
                missing.append(s.name)
            continue
        unit = forward_seconds(s)
        for name in names:
            rows.append(measure(s, metas[s.name], name, unit))
            r = rows[-1]
            print(f"[{time.strftime('%H:%M:%S')}] {s.name} {name}: ACC {r['acc_before']:.2f}->{r['acc_after']:.2f} "
                  f"ASR {_f(r['asr_before'])}->{_f(r['asr_after'])} pruned {r['pruned']} ({r['seconds']:.0f}s)", flush=True)
    body = (
        f"## Backdoor removal, {args.part} part of the zoo trained {EPOCHS} epochs (issue 13)\n\n"
        + provenance("cpu")
        + (f"\n**Not measured** (not trained or measured in this session's time): {', '.join(missing)}.\n" if missing else "")
        + ("\nRows measured by earlier runs of `removal` (one process per architecture, one torch thread each, beside "
           "other jobs: seconds are inflated up to ~3x), read back from the cache.\n" if args.cached_only else "")
        + f"\nLoad average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (times are indicative). "
        "Variants (benchmarks/removal.py VARIANTS): "
        + "; ".join(f"`{n}` = {VARIANTS[n]}" for n in names) + ".\n\n" + report(rows, names) + "\n"
    )
    if args.part == "holdout" and not args.variants and not args.arch:
        write_section("removal", body)
    print(body)
