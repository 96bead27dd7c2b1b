"""Efficacy zoo: train clean and backdoored BatchNorm models on real MNIST digits, then scan,
prune and evaluate each with BNP, EP and CLP at u = 3, and with bnp+ at its defaults (its prune
count from a clean-accuracy budget), through bdprune's library (the same code
as the CLI), and write the table to RESULTS.md.

Data: /work/shared/data/mnist10k.npz (10,000 real digits), split once by a seeded permutation
into 500 held-out clean images (BNP's clean samples, never trained on), 1,500 test images (ACC
and ASR) and 8,000 training images. The split's indices are saved in cache/split.npz and the
clean and test sets as cache/clean.npz and cache/test.npz.

Zoo: three architectures (``resnet18``, ``preactresnet18``, ``vgg11_bn1d``, all width 16,
1 input channel) x (3 clean seeds + BadNets, Blended and SIG at one poisoning rate each in
each part). Rates 1%, 5%, 10% are rotated over architectures so each (attack, rate) pair occurs
once per part. Two parts: ``tune`` and ``holdout``; holdout models use other training seeds and
other trigger patterns (patch colour/position/size, noise seed, stripe frequency). All-to-one,
target label varied. Models, their configs (with ACC/ASR) and each scan's full JSON are cached
under cache/ (git-ignored): a rerun trains nothing and only re-measures.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
DATA = Path("/work/shared/data/mnist10k.npz")
SPLIT_SEED = 2022
N_CLEAN, N_TEST = 500, 1500
N_TRAIN = 5000  # of the 8,000 left after the split, to keep the zoo in its CPU budget
EPOCHS = 2
EP_SAMPLES = 2000
U = 3.0
METHODS = ("bnp", "ep", "clp", "bnp+")  # bnp+: bdprune's own (issue 7), with its defaults
RATES = (0.01, 0.05, 0.10)
ARCHS = ("resnet18", "preactresnet18", "vgg11_bn1d")
ARCH_ARGS = {"width": "16"}
ATTACKS = ("badnets", "blended", "sig")
TRIGGERS = {
    "tune": {
        "badnets": "patch:size=3,pos=br,margin=1,color=1",
        "blended": "blend:noise,seed=1,alpha=0.15",
        "sig": "sig:delta=0.1,freq=6",
    },
    "holdout": {
        "badnets": "patch:size=4,pos=tl,margin=2,color=0.7",
        "blended": "blend:noise,seed=7,alpha=0.2",
        "sig": "sig:delta=0.1,freq=4",
    },
}
SEED_BASE = {"tune": 0, "holdout": 100}
# A backdoor "took" when the trained model's ASR is at least this; others are listed, not scored.
ASR_TOOK = 50.0
SUCCESS_ASR, SUCCESS_DROP = 5.0, 2.0


def backdoor_took(row: dict) -> bool:
    """A measured row of a backdoored model whose backdoor took (ASR before >= ASR_TOOK)."""
    return row["attack"] != "clean" and (row["asr_before"] or 0) >= ASR_TOOK


def succeeded(row: dict) -> bool:
    """Pruning removed the backdoor (ASR after <= SUCCESS_ASR) and kept the model (ACC drop <= SUCCESS_DROP)."""
    return row["asr_after"] <= SUCCESS_ASR and row["acc_before"] - row["acc_after"] <= SUCCESS_DROP


@dataclass
class ModelSpec:
    name: str
    part: str
    arch: str
    attack: str  # "clean" or one of ATTACKS
    rate: float
    target: int | None
    trigger: str | None
    seed: int
    epochs: int = EPOCHS

    @property
    def cache(self) -> Path:
        """This model's cache directory (depends on its training length)."""
        return zoo_dir(self.epochs)


def zoo_dir(epochs: int = EPOCHS) -> Path:
    """Where a zoo trained for ``epochs`` keeps its models, scans and measurements (the data
    split is shared): cache/ for the default, cache/epochs<N>/ for another length."""
    return CACHE if epochs == EPOCHS else CACHE / f"epochs{epochs}"


def zoo_specs(epochs: int = EPOCHS) -> list[ModelSpec]:
    """The whole zoo, in training order (cheapest architecture first)."""
    specs = []
    for a, arch in enumerate(ARCHS):
        for part in ("tune", "holdout"):
            base = SEED_BASE[part]
            clean_seeds = (base, base + 1) if part == "tune" else (base,)
            for seed in clean_seeds:
                specs.append(ModelSpec(f"{part}-{arch}-clean-s{seed}", part, arch, "clean", 0.0, None, None, seed, epochs))
            shift = 0 if part == "tune" else 1
            for k, attack in enumerate(ATTACKS):
                rate = RATES[(a + k + shift) % len(RATES)]
                target = (3 * a + 4 * k + 5 * shift + 1) % 10
                seed = base + 10 + 3 * a + k
                name = f"{part}-{arch}-{attack}-r{round(rate * 100):02d}-t{target}-s{seed}"
                specs.append(ModelSpec(name, part, arch, attack, rate, target, TRIGGERS[part][attack], seed, epochs))
    order = {arch: i for i, arch in enumerate(("vgg11_bn1d", "preactresnet18", "resnet18"))}
    return sorted(specs, key=lambda s: order[s.arch])


# ---------------------------------------------------------------- data

def split_data() -> dict[str, torch.Tensor]:
    """Load MNIST, make (or reuse) the seeded split, write clean.npz/test.npz; return tensors."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with np.load(DATA) as npz:
        images, labels = npz["images"], npz["labels"].astype(np.int64)
    split = CACHE / "split.npz"
    if split.exists():
        with np.load(split) as s:
            clean_idx, test_idx, train_idx = s["clean_idx"], s["test_idx"], s["train_idx"]
    else:
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        clean_idx, test_idx, train_idx = perm[:N_CLEAN], perm[N_CLEAN : N_CLEAN + N_TEST], perm[N_CLEAN + N_TEST :]
        np.savez(split, clean_idx=clean_idx, test_idx=test_idx, train_idx=train_idx, seed=SPLIT_SEED, n_train=N_TRAIN)
    assert not (set(clean_idx) | set(test_idx)) & set(train_idx)
    for part, idx in (("clean", clean_idx), ("test", test_idx)):
        path = CACHE / f"{part}.npz"
        if not path.exists():
            np.savez(path, images=images[idx], labels=labels[idx])
    to_t = lambda idx: torch.from_numpy(images[idx]).float().div_(255.0).unsqueeze(1)  # noqa: E731
    train_idx = train_idx[:N_TRAIN]
    return {"train_x": to_t(train_idx), "train_y": torch.from_numpy(labels[train_idx])}


def model_path(spec: ModelSpec) -> Path:
    return spec.cache / "models" / f"{spec.name}.safetensors"


def ep_data_path(spec: ModelSpec) -> Path:
    """EP's samples for ``spec``: a seeded draw of its own (poisoned) training set."""
    return spec.cache / "epdata" / f"{spec.name}.npz"


def poisoned_training_set(spec: ModelSpec, data: dict[str, torch.Tensor]):
    from bdprune.training import poison
    from bdprune.triggers import parse_trigger

    if spec.attack == "clean":
        return data["train_x"], data["train_y"], torch.zeros(len(data["train_y"]), dtype=torch.bool)
    ps = poison(data["train_x"], data["train_y"], parse_trigger(spec.trigger), rate=spec.rate, target=spec.target, seed=spec.seed)
    return ps.images, ps.labels, ps.poisoned


# ---------------------------------------------------------------- training

def evaluate(path: Path, spec: ModelSpec) -> tuple[float, float | None]:
    from bdprune.api import evaluate_checkpoints

    [r] = evaluate_checkpoints(
        [path], spec.arch, data=CACHE / "test.npz", target=spec.target, trigger=spec.trigger, device="cpu", arch_args=ARCH_ARGS
    )
    return r.acc, r.asr


def train_one(spec: ModelSpec, data: dict[str, torch.Tensor], log) -> dict:
    """Train ``spec`` unless cached; return its config JSON (with ACC and ASR)."""
    from safetensors.torch import save_file

    from bdprune.archs import build_model
    from bdprune.training import train_classifier

    meta_path = model_path(spec).with_suffix(".json")
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    model_path(spec).parent.mkdir(parents=True, exist_ok=True)
    x, y, mask = poisoned_training_set(spec, data)
    # EP's data: a seeded 2,000-sample draw of this model's own (poisoned) training set.
    g = torch.Generator().manual_seed(spec.seed)
    pick = torch.randperm(len(x), generator=g)[:EP_SAMPLES].sort().values
    ep_path = ep_data_path(spec)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ep_path, images=x[pick].numpy(), labels=y[pick].numpy(), poisoned=mask[pick].numpy())
    model, _ = build_model(spec.arch, None, arch_args={**ARCH_ARGS, "in_channels": "1"})
    t0 = time.perf_counter()
    train_classifier(model, x, y, epochs=spec.epochs, seed=spec.seed)
    train_s = time.perf_counter() - t0
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(model_path(spec)))
    acc, asr = evaluate(model_path(spec), spec)
    meta = {
        **asdict(spec),
        "arch_args": ARCH_ARGS,
        "in_channels": 1,
        "train_images": len(x),
        "poisoned_images": int(mask.sum()),
        "ep_draw_poisoned": int(mask[pick].sum()),
        "train_seconds": round(train_s, 1),
        "acc": acc,
        "asr": asr,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"trained {spec.name}: ACC {acc:.2f} ASR {asr if asr is None else round(asr, 2)} in {train_s:.0f}s")
    return meta


# ---------------------------------------------------------------- measuring

def measure_one(spec: ModelSpec, meta: dict, method: str) -> dict:
    """Scan (timed), save the scan JSON, prune from it, evaluate the pruned model."""
    from bdprune.api import prune_checkpoint, scan_checkpoints

    data, samples = {
        "bnp": (CACHE / "clean.npz", N_CLEAN),
        "bnp+": (CACHE / "clean.npz", N_CLEAN),
        "ep": (ep_data_path(spec), EP_SAMPLES),
        "clp": (None, 500),
    }[method]
    t0 = time.perf_counter()
    [result] = scan_checkpoints(
        [model_path(spec)], spec.arch, method=method, data=data, u=U, samples=samples, seed=0,
        device="cpu", arch_args=ARCH_ARGS, show_progress=False,
    )
    scan_s = time.perf_counter() - t0
    scan_path = spec.cache / "scans" / f"{spec.name}__{method}.json"
    scan_path.parent.mkdir(parents=True, exist_ok=True)
    scan_path.write_text(json.dumps(result.to_dict(), indent=1))
    out = spec.cache / "pruned" / f"{spec.name}__{method}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    if method == "bnp+":  # the prune count comes from its clean-accuracy budget, not from the scan's u
        t0 = time.perf_counter()
        outcome = prune_checkpoint(
            model_path(spec), spec.arch, method=method, data=data, samples=samples, output=out, force=True,
            device="cpu", arch_args=ARCH_ARGS, show_progress=False,
        )
        scan_s, pruned = time.perf_counter() - t0, outcome.k
    else:
        prune_checkpoint(model_path(spec), spec.arch, channels_report=scan_path, output=out, force=True, arch_args=ARCH_ARGS, show_progress=False)
        pruned = result.flagged_total
    acc, asr = evaluate(out, spec)
    return {
        "model": spec.name, "part": spec.part, "arch": spec.arch, "attack": spec.attack, "rate": spec.rate,
        "target": spec.target, "method": method, "acc_before": meta["acc"], "asr_before": meta["asr"],
        "acc_after": acc, "asr_after": asr, "pruned": pruned, "channels": result.channels_total,
        "scan_seconds": scan_s, "samples": result.samples,
        "verdict": result.verdict.label, "statistic": result.verdict.statistic,
    }


# ---------------------------------------------------------------- report

def _med(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else math.nan


def _f(v, digits=1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summarize(rows: list[dict]) -> str:
    lines = []
    lines.append("### Summary per method (bnp, ep, clp at u = 3; bnp+ at its default budget)\n")
    lines.append(
        f"A backdoor *took* when the trained model's ASR is >= {ASR_TOOK:g}%; success = ASR after <= "
        f"{SUCCESS_ASR:g}% with ACC drop <= {SUCCESS_DROP:g} points. Medians over backdoored models that took.\n"
    )
    lines.append("Verdict: the checkpoint-level verdict of `scan` at its default threshold (the CI gate's exit 1).\n")
    lines.append("| method | part | backdoored (took) | median ASR after | median ACC drop | success | ASR after <= 5% (any ACC drop) | clean models: channels pruned, median (max) | clean: median ACC drop | verdict: backdoored caught | verdict: clean flagged | median scan time (s) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method in METHODS:
        for part in ("tune", "holdout", "all"):
            sel = [r for r in rows if r["method"] == method and (part == "all" or r["part"] == part)]
            bd = [r for r in sel if r["attack"] != "clean"]
            took = [r for r in bd if backdoor_took(r)]
            clean = [r for r in sel if r["attack"] == "clean"]
            ok = [r for r in took if succeeded(r)]
            share = f"{len(ok)}/{len(took)} ({100 * len(ok) / len(took):.0f}%)" if took else "-"
            removed = sum(r["asr_after"] <= SUCCESS_ASR for r in took)
            pct = [100 * r["pruned"] / r["channels"] for r in clean]
            caught = sum(r["verdict"] == "suspicious" for r in took)
            alarms = sum(r["verdict"] == "suspicious" for r in clean)
            lines.append(
                f"| {method} | {part} | {len(bd)} ({len(took)}) | {_f(_med(r['asr_after'] for r in took))} | "
                f"{_f(_med(r['acc_before'] - r['acc_after'] for r in took), 2)} | {share} | {removed}/{len(took)} | "
                f"{_f(_med(pct), 2)}% ({_f(max(pct) if pct else None, 2)}%) | "
                f"{_f(_med(r['acc_before'] - r['acc_after'] for r in clean), 2)} | {caught}/{len(took)} | {alarms}/{len(clean)} | "
                f"{_f(_med(r['scan_seconds'] for r in sel), 2)} |"
            )
    lines.append("\n### Median ASR after pruning, by attack, architecture and poisoning rate (backdoors that took, both parts)\n")
    groups = [("attack", a) for a in ATTACKS] + [("arch", a) for a in ARCHS] + [("rate", r) for r in RATES]
    lines.append("| group | n | " + " | ".join(METHODS) + " | bnp verdict: caught |")
    lines.append("|---|---|" + "---|" * (len(METHODS) + 1))
    for key, value in groups:
        cells = []
        n = 0
        for method in METHODS:
            sel = [r for r in rows if r["method"] == method and r[key] == value and backdoor_took(r)]
            n = len(sel)
            cells.append(_f(_med(r["asr_after"] for r in sel)))
            if method == "bnp":
                caught = f"{sum(r['verdict'] == 'suspicious' for r in sel)}/{n}"
        label = f"{value:.0%}" if key == "rate" else value
        lines.append(f"| {key}={label} | {n} | " + " | ".join(cells) + f" | {caught} |")
    return "\n".join(lines)


def side_by_side(rows: list[dict], part: str = "holdout") -> str:
    """Per model of ``part``: ACC / ASR before, then after each method, and bnp+'s summary line."""
    models = sorted({r["model"] for r in rows if r["part"] == part})
    by = {(r["model"], r["method"]): r for r in rows}
    lines = [
        "| model | before ACC / ASR | " + " | ".join(f"{m} ACC / ASR (pruned)" for m in METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for name in models:
        first = next(by[(name, m)] for m in METHODS if (name, m) in by)
        cells = [
            f"{_f(by[(name, m)]['acc_after'], 2)} / {_f(by[(name, m)]['asr_after'])} ({by[(name, m)]['pruned']})" if (name, m) in by else "-"
            for m in METHODS
        ]
        lines.append(f"| {name} | {_f(first['acc_before'], 2)} / {_f(first['asr_before'])} | " + " | ".join(cells) + " |")
    for method in METHODS:
        sel = [r for r in rows if r["part"] == part and r["method"] == method]
        took = [r for r in sel if backdoor_took(r)]
        ok = [r for r in took if succeeded(r)]
        clean = [r["acc_before"] - r["acc_after"] for r in sel if r["attack"] == "clean"]
        lines.append(
            f"\n{method} ({part}): backdoored models brought to ASR <= {SUCCESS_ASR:g}% with ACC drop <= {SUCCESS_DROP:g}: "
            f"{len(ok)} / {len(took)}; clean models' ACC drop: max {_f(max(clean) if clean else None, 2)}"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | ACC before | ASR before | ACC after | ASR after | pruned (% of channels) | verdict (statistic) | scan s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {_f(r['acc_before'], 2)} | {_f(r['asr_before'])} | {_f(r['acc_after'], 2)} | "
            f"{_f(r['asr_after'])} | {r['pruned']}/{r['channels']} ({100 * r['pruned'] / r['channels']:.2f}%) | "
            f"{r['verdict']} ({r['statistic']:.3g}) | {r['scan_seconds']:.2f} |"
        )
    return "\n".join(lines)


def run(args) -> None:
    from _report import provenance, write_section

    torch.set_num_threads(args.threads)
    epochs = getattr(args, "epochs", None) or EPOCHS  # `run.py all` has no --epochs
    here = zoo_dir(epochs)
    here.mkdir(parents=True, exist_ok=True)
    log_path = here / "zoo.log"
    load = os.getloadavg()[0]

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with log_path.open("a") as f:
            f.write(line + "\n")

    data = split_data()
    specs = [s for s in zoo_specs(epochs) if args.part in (None, s.part) and (not args.arch or s.arch in args.arch)]
    t0 = time.perf_counter()
    metas = {s.name: train_one(s, data, log) for s in specs}
    log(f"zoo ready: {len(specs)} models ({time.perf_counter() - t0:.0f}s)")
    if args.train_only:
        return
    rows = []
    for s in specs:
        for method in METHODS:
            cached = here / "measure" / f"{s.name}__{method}.json"
            if args.reuse_measurements and cached.exists():
                rows.append(json.loads(cached.read_text()))
                continue
            rows.append(measure_one(s, metas[s.name], method))
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(rows[-1]))
            r = rows[-1]
            log(f"{s.name} {method}: ACC {r['acc_before']:.2f}->{r['acc_after']:.2f} ASR {_f(r['asr_before'])}->{_f(r['asr_after'])} "
                f"pruned {r['pruned']}/{r['channels']} ({r['scan_seconds']:.1f}s)")
    (here / "zoo_results.json").write_text(json.dumps(rows, indent=1))
    models = "\n".join(
        f"| {m['name']} | {m['part']} | {m['arch']} | {m['attack']} | {m['trigger'] or '-'} | "
        f"{round(m['rate'] * 100)}% | {'-' if m['target'] is None else m['target']} | {m['seed']} | {m['train_seconds']} |"
        for m in metas.values()
    )
    took = [m for m in metas.values() if m["attack"] != "clean" and (m["asr"] or 0) < ASR_TOOK]
    body = (
        f"## Efficacy zoo{'' if epochs == EPOCHS else f', trained {epochs} epochs'} (MNIST digits; bnp, ep, clp at u = 3; bnp+ at its defaults)\n\n"
        + provenance("cpu")
        + f"\nData: {DATA} split by seed {SPLIT_SEED} into {N_CLEAN} held-out clean (BNP's samples, never trained on), "
        f"{N_TEST} test (ACC; ASR on the test images whose label is not the target) and 8,000 training images "
        f"of which the first {len(data['train_y'])} are used (indices in benchmarks/cache/split.npz). Each model trained {epochs} epochs with bdprune.training.train_classifier "
        f"(SGD, one-cycle LR 0.05, batch 128), width 16, 1 input channel. BNP: the {N_CLEAN} held-out clean images; "
        f"EP: a seeded {EP_SAMPLES}-image draw of the model's own poisoned training set; CLP: no data. "
        f"Pruning through bdprune.core.prune_checkpoint from the saved scan JSON ({here.relative_to(HERE.parent)}/scans/). "
        "Scan time includes loading the checkpoint (for bnp+ it is the time of its prune: the scan plus the search for k "
        f"on the clean samples). Load average when the run started: {load:.1f} on {os.cpu_count()} CPUs; "
        "times are indicative only.\n"
        + (
            f"\nMeasurements were reused from {here.relative_to(HERE.parent)}/measure/, made by an earlier run of the same command "
            "without --reuse-measurements (or with --arch NAME, one architecture per process; same code).\n"
            if args.reuse_measurements else ""
        )
        + "\n"
        "### Models\n\n| model | part | arch | attack | trigger | rate | target | seed | train s |\n|---|---|---|---|---|---|---|---|---|\n"
        + models
        + ("\n\nBackdoors that did not take (ASR before < 50%): " + ", ".join(f"{m['name']} ({_f(m['asr'])}%)" for m in took) if took else "")
        + "\n\n" + summarize(rows)
        + "\n\n### Holdout part (never tuned on): every method side by side\n\n" + side_by_side(rows)
        + "\n\n### Every model and method\n\n" + table(rows) + "\n"
    )
    if args.part is None and not args.arch:
        section = "zoo" if epochs == EPOCHS else f"zoo-epochs{epochs}"
        write_section(section, body)
        log(f"wrote RESULTS.md ({section} section)")
    else:
        print(body)
