"""Choose bnp+'s ranking, fill and default budget on the zoo's ``tune`` part only.

Run after the zoo is trained: ``python benchmarks/run.py bnp-plus-tune`` (or ``--shard 0`` and
``--shard 1`` side by side; results cached per model, so a rerun continues; prints a table; the
chosen defaults live in bdprune/methods/bnp_plus.py). For every tune model whose backdoor took,
and every clean tune model, each candidate ranking x fill is pruned through bdprune's own
``choose_k`` at each budget and evaluated on the zoo's test set:

- rankings: ``kl`` (raw KL, network-wide), ``layer-z`` (BNP's per-layer z-score, ranked
  network-wide), ``layer-rz`` (per-layer robust z, median/MAD);
- fill: ``zero`` (gamma = 0, BNP's mask) or ``mean`` (gamma = 0, beta = clean mean output).
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch

import zoo

RANKINGS = ("kl", "layer-z", "layer-rz")
FILLS = ("zero", "mean")
BUDGETS = (0.5, 1.0, 2.0)


def ranked_variant(result, ranking: str, fill: str):
    """A copy of a bnp+ ScanResult whose z (the ranking key) and fill follow the candidate."""
    from bdprune.verdict import robust_z

    r = copy.deepcopy(result)
    for layer in r.layers:
        s = torch.tensor(layer.scores, dtype=torch.float64)
        if ranking == "layer-z":
            layer.z = ((s - s.mean()) / s.std()).tolist() if len(s) > 1 and s.std() > 0 else [0.0] * len(s)
        elif ranking == "layer-rz":
            layer.z = robust_z(layer.scores, False)
    if fill == "zero":
        r.fill, r.pruned_params = None, ("weight",)
    return r


def measure(spec, meta) -> list[dict]:
    from bdprune.scan import load_samples
    from bdprune.evaluate import evaluate_model
    from bdprune.prune import mask_model
    from bdprune.options import ScanSettings
    from bdprune.scan import load_model, score_model
    from bdprune.triggers import parse_trigger
    from bdprune.tune import choose_k

    loaded = load_model(zoo.model_path(spec), spec.arch, arch_args=zoo.ARCH_ARGS)
    clean = load_samples(zoo.CACHE / "clean.npz", zoo.N_CLEAN, 0)
    test = load_samples(zoo.CACHE / "test.npz", None, 0)
    base = score_model(loaded, clean, ScanSettings(method="bnp+", u=3.0, device="cpu").resolve(has_data=True), show_progress=False)
    trig = parse_trigger(spec.trigger) if spec.trigger else None
    rows = []
    for ranking in RANKINGS:
        for fill in FILLS:
            variant = ranked_variant(base, ranking, fill)
            t0 = time.perf_counter()
            _, val_base, curve = choose_k(loaded.model, variant, clean, max(BUDGETS), device=torch.device("cpu"))
            for budget in BUDGETS:
                k = 0
                for p in curve:
                    if val_base - p.acc > budget:
                        break
                    k = p.channels
                model = copy.deepcopy(loaded.model)
                mask_model(model, variant.top(k), variant.pruned_params, variant.fill)
                ev = evaluate_model(model, test, checkpoint=spec.name, target=spec.target, trigger=trig, device=torch.device("cpu"))
                rows.append({
                    "model": spec.name, "arch": spec.arch, "attack": spec.attack, "ranking": ranking, "fill": fill, "budget": budget,
                    "k": k, "acc_before": meta["acc"], "asr_before": meta["asr"], "acc_after": ev.acc, "asr_after": ev.asr,
                    "seconds": time.perf_counter() - t0,
                })
    return rows


def summary(rows: list[dict]) -> str:
    lines = ["| ranking | fill | budget | backdoored: success | median ASR after | median ACC drop | clean: max ACC drop |", "|---|---|---|---|---|---|---|"]
    for ranking in RANKINGS:
        for fill in FILLS:
            for budget in BUDGETS:
                sel = [r for r in rows if (r["ranking"], r["fill"], r["budget"]) == (ranking, fill, budget)]
                bd = [r for r in sel if r["attack"] != "clean"]
                cl = [r for r in sel if r["attack"] == "clean"]
                ok = [r for r in bd if zoo.succeeded(r)]
                lines.append(
                    f"| {ranking} | {fill} | {budget:g} | {len(ok)}/{len(bd)} | {statistics.median(r['asr_after'] for r in bd):.1f} | "
                    f"{statistics.median(r['acc_before'] - r['acc_after'] for r in bd):.2f} | {max(r['acc_before'] - r['acc_after'] for r in cl):.2f} |"
                )
    return "\n".join(lines)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    out = zoo.CACHE / f"bnp_plus_tuning{'' if args.shard is None else f'_{args.shard}'}.json"
    done = json.loads(out.read_text()) if out.exists() else []
    seen = {r["model"] for r in done}
    for i, spec in enumerate(s for s in zoo.zoo_specs() if s.part == "tune"):
        if args.shard is not None and i % 2 != args.shard:
            continue
        meta = json.loads(zoo.model_path(spec).with_suffix(".json").read_text())
        if spec.attack != "clean" and (meta["asr"] or 0) < zoo.ASR_TOOK or spec.name in seen:
            continue
        rows = measure(spec, meta)
        done += rows
        out.write_text(json.dumps(done, indent=1))
        print(spec.name, [(r["ranking"], r["fill"], r["budget"], r["k"], round(r["acc_after"], 1), r["asr_after"] and round(r["asr_after"], 1)) for r in rows], flush=True)
    every = [r for path in sorted(zoo.CACHE.glob("bnp_plus_tuning*.json")) for r in json.loads(path.read_text())]
    print(summary(every))  # over every shard measured so far
