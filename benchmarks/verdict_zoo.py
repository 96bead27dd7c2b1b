"""Verdict zoo: small clean and backdoored BatchNorm models on three kinds of input, to choose the
checkpoint-level verdict statistic on one part and measure it on another (issue 14). It measures
the verdict of that issue (the per-class probe's explained share, now bdprune/class_probe.py); the
current verdict is measured on benchmarks/detection_zoo.py.

Kinds of input (each split once, seeded, into training, clean (BNP's samples) and test images):

* ``digits8``: scikit-learn's 8x8 digits (1,797 images; 1,297 train / 300 clean / 200 test);
* ``mnist28``: 28x28 MNIST digits from /work/shared/data/mnist10k.npz (3,000 train / 500 clean /
  1,000 test);
* ``cmnist32``: the same digits coloured and padded to 3x32x32: each image gets a random
  foreground and background colour (seeded per image), ``x = bg + (fg - bg) * digit``.

Attacks (all-to-one, dirty label): BadNets patch, Blended noise, SIG stripes and a WaNet-style warp
(``warp:...``), each at 1%, 5% and 10% of the training set, plus 4 clean seeds per architecture.
Architectures: digits8: smallcnn w8, smallcnn w16, resnet18 w8; mnist28: smallcnn w8,
vgg11_bn1d w8, resnet18 w8; cmnist32: smallcnn w8, vgg11_bn1d w8.

Parts: ``cal`` (calibration: every digits8 model and mnist28's smallcnn) and ``eval`` (everything
else: other architectures on mnist28, the whole cmnist32 kind). Statistics and thresholds are chosen
on ``cal`` only; ``eval`` is reported, never tuned on.

Everything is cached under benchmarks/cache/verdict/ (git-ignored): models with a JSON beside each
(config, ACC, ASR, training time) and the bnp scan of each (scores per layer, seconds).

    python benchmarks/verdict_zoo.py train [--kind K] [--part P]   # train + scan what is missing
    python benchmarks/verdict_zoo.py probe [--kind K] [--part P]   # the class probe of trained models
    python benchmarks/verdict_zoo.py list
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "verdict"
MNIST = Path("/work/shared/data/mnist10k.npz")
SPLIT_SEED = 14
RATES = (0.01, 0.05, 0.10)
ATTACKS = ("badnets", "blended", "sig", "warp")
CLEAN_SEEDS = 4
ASR_TOOK = 50.0  # a backdoor "took" when the trained model's ASR is at least this (as in zoo.py)

KINDS = {
    # kind: (train, clean, test, epochs, samples scanned)
    "digits8": (1297, 300, 200, 30, 300),
    "mnist28": (3000, 500, 1000, 6, 500),
    "cmnist32": (3000, 500, 1000, 6, 500),
}
ARCHS = {
    "digits8": (("smallcnn", 8), ("smallcnn", 16), ("resnet18", 8)),
    "mnist28": (("smallcnn", 8), ("vgg11_bn1d", 8), ("resnet18", 8)),
    "cmnist32": (("smallcnn", 8), ("vgg11_bn1d", 8)),  # preactresnet18 w8 dropped: ~90 s a model on the shared CPU
}
CAL = {("digits8", a) for a in ("smallcnn8", "smallcnn16", "resnet188")} | {("mnist28", "smallcnn8")}


def triggers(kind: str, variant: int) -> dict[str, str]:
    """The trigger of each attack for ``kind``; ``variant`` (the architecture's index) moves the
    patch, reseeds the noise and the warp, and changes the stripe frequency."""
    small = kind == "digits8"
    corner = ("br", "tl", "tr")[variant % 3]
    color = "1" if kind != "cmnist32" else ("#ff0000", "#00ff00", "#ffff00")[variant % 3]
    return {
        "badnets": f"patch:size={2 if small else 3},pos={corner},margin={0 if small else 1},color={color}",
        "blended": f"blend:noise,seed={variant + 1},alpha=0.15",
        "sig": f"sig:delta=0.1,freq={((6, 3, 5) if small else (6, 4, 5))[variant % 3]}",  # freq 4 on 8 columns is all zeros
        "warp": f"warp:k=4,s={2 if small else 1.5},seed={variant + 1}",
    }


@dataclass
class Spec:
    name: str
    kind: str
    arch: str
    width: int
    attack: str
    rate: float
    target: int | None
    trigger: str | None
    seed: int
    part: str

    @property
    def arch_args(self) -> dict[str, str]:
        return {"width": str(self.width), "in_channels": "3" if self.kind == "cmnist32" else "1"}


def specs() -> list[Spec]:
    out = []
    for kind, archs in ARCHS.items():
        for a, (arch, width) in enumerate(archs):
            part = "cal" if (kind, f"{arch}{width}") in CAL else "eval"
            tag = f"{kind}-{arch}{width}"
            for s in range(CLEAN_SEEDS):
                out.append(Spec(f"{tag}-clean-s{s}", kind, arch, width, "clean", 0.0, None, None, 100 * a + s, part))
            trig = triggers(kind, a)
            for k, attack in enumerate(ATTACKS):
                for r, rate in enumerate(RATES):
                    target = (a * 3 + k * 4 + r * 7 + 1) % 10
                    seed = 100 * a + 10 + 3 * k + r
                    out.append(Spec(f"{tag}-{attack}-r{round(rate * 100):02d}-t{target}-s{seed}", kind, arch, width,
                                    attack, rate, target, trig[attack], seed, part))
    return out


# ---------------------------------------------------------------- data

def _colorize(images: np.ndarray, seed: int) -> np.ndarray:
    """uint8 N x 28 x 28 digits -> float32 N x 3 x 32 x 32: a random fg/bg colour per image."""
    rng = np.random.default_rng(seed)
    n = len(images)
    fg = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    bg = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    # keep the digit visible: push fg and bg apart in brightness
    swap = fg.mean(1, keepdims=True) < bg.mean(1, keepdims=True)
    fg, bg = np.where(swap, bg, fg), np.where(swap, fg, bg)
    fg, bg = np.clip(fg + 0.25, 0, 1), np.clip(bg - 0.25, 0, 1)
    digit = np.pad(images.astype(np.float32) / 255.0, ((0, 0), (2, 2), (2, 2)))[:, None]
    return (bg + (fg - bg) * digit).astype(np.float32)


def load_kind(kind: str) -> dict[str, torch.Tensor]:
    """Float tensors train_x/y, clean_x/y, test_x/y for ``kind``; writes cache/verdict/data/KIND_clean.npz."""
    n_train, n_clean, n_test, *_ = KINDS[kind]
    if kind == "digits8":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[:, None]
        y = d.target.astype(np.int64)
    else:
        with np.load(MNIST) as npz:
            raw, y = npz["images"], npz["labels"].astype(np.int64)
        x = raw.astype(np.float32)[:, None] / 255.0 if kind == "mnist28" else _colorize(raw, SPLIT_SEED)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    clean, test, train = perm[:n_clean], perm[n_clean : n_clean + n_test], perm[n_clean + n_test :][:n_train]
    t = lambda idx: torch.from_numpy(np.ascontiguousarray(x[idx]))  # noqa: E731
    out = {"train_x": t(train), "train_y": torch.from_numpy(y[train]), "clean_x": t(clean), "clean_y": torch.from_numpy(y[clean]),
           "test_x": t(test), "test_y": torch.from_numpy(y[test])}
    path = clean_npz(kind)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=out["clean_x"].numpy(), labels=out["clean_y"].numpy())
    return out


def clean_npz(kind: str) -> Path:
    return CACHE / "data" / f"{kind}_clean.npz"


def model_path(spec: Spec) -> Path:
    return CACHE / "models" / f"{spec.name}.safetensors"


def scan_path(spec: Spec) -> Path:
    return CACHE / "scans" / f"{spec.name}.json"


# ---------------------------------------------------------------- train and scan

def accuracy(model, x, y) -> float:
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return 100.0 * float((pred == y).double().mean())


def acc_asr(model, spec: Spec, data: dict[str, torch.Tensor]) -> tuple[float, float | None]:
    """ACC on the test images and, for a backdoored ``spec``, ASR on those not of its target, triggered."""
    from bdprune.triggers import parse_trigger

    model.eval()
    acc = accuracy(model, data["test_x"], data["test_y"])
    if spec.attack == "clean":
        return acc, None
    keep = data["test_y"] != spec.target
    trig = parse_trigger(spec.trigger).apply(data["test_x"][keep])
    return acc, accuracy(model, trig, torch.full((len(trig),), spec.target))


def train_one(spec: Spec, data: dict[str, torch.Tensor]) -> dict:
    from safetensors.torch import save_file

    from bdprune.archs import build_model
    from bdprune.training import poison, train_classifier
    from bdprune.triggers import parse_trigger

    meta_path = model_path(spec).with_suffix(".json")
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    x, y = data["train_x"], data["train_y"]
    poisoned = 0
    if spec.attack != "clean":
        ps = poison(x, y, parse_trigger(spec.trigger), rate=spec.rate, target=spec.target, seed=spec.seed)
        x, y, poisoned = ps.images, ps.labels, int(ps.poisoned.sum())
    model, _ = build_model(spec.arch, None, arch_args=spec.arch_args)
    t0 = time.perf_counter()
    train_classifier(model, x, y, epochs=KINDS[spec.kind][3], seed=spec.seed)
    train_s = time.perf_counter() - t0
    acc, asr = acc_asr(model, spec, data)
    model_path(spec).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(model_path(spec)))
    meta = {**asdict(spec), "arch_args": spec.arch_args, "poisoned_images": poisoned, "train_images": len(x),
            "epochs": KINDS[spec.kind][3], "train_seconds": round(train_s, 1), "acc": acc, "asr": asr}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def scan_one(spec: Spec) -> dict:
    """The bnp scan of ``spec`` on its kind's clean samples (cached), with its wall time."""
    from bdprune.core import scan_checkpoints

    path = scan_path(spec)
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    [result] = scan_checkpoints([model_path(spec)], spec.arch, method="bnp", data=clean_npz(spec.kind), samples=KINDS[spec.kind][4],
                                seed=0, device="cpu", arch_args=spec.arch_args, show_progress=False)
    doc = result.to_dict()
    doc["scan_seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


def probe_path(spec: Spec) -> Path:
    return CACHE / "probe" / f"{spec.name}.json"


def probe_one(spec: Spec) -> dict:
    """The class probe (bdprune.probe.class_probe) of ``spec`` on its kind's clean samples (cached)."""
    from bdprune.core import load_model, load_samples
    from bdprune.class_probe import class_probe, explained_divergence

    path = probe_path(spec)
    if path.exists():
        return json.loads(path.read_text())
    images = load_samples(clean_npz(spec.kind), KINDS[spec.kind][4], 0).images
    model = load_model(model_path(spec), spec.arch, arch_args=spec.arch_args).model
    probe = class_probe(model, images)
    t0 = time.perf_counter()
    explained = explained_divergence(model, images, [cand[3] for cand in probe.candidates])
    doc = probe.to_dict()
    doc["explained"] = explained
    doc["explain_seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


def took(meta: dict) -> bool:
    return meta["attack"] == "clean" or (meta["asr"] or 0.0) >= ASR_TOOK


def load_zoo(probe: bool = False) -> list[tuple]:
    """(model JSON, scan JSON[, probe JSON]) of every trained and scanned (and probed) model."""
    out = []
    for spec in specs():
        m, s, p = model_path(spec).with_suffix(".json"), scan_path(spec), probe_path(spec)
        if m.exists() and s.exists() and (not probe or p.exists()):
            row = (json.loads(m.read_text()), json.loads(s.read_text()))
            out.append(row + (json.loads(p.read_text()),) if probe else row)
    return out


# ---------------------------------------------------------------- report

def auroc(pos: list[float], neg: list[float]) -> float:
    """P(a backdoored model's statistic > a clean one's), ties counting half."""
    if not pos or not neg:
        return float("nan")
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def statistics_of(scan: dict, probe: dict | None) -> dict[str, float]:
    """Candidate checkpoint statistics of one model (the shipped one is ``verdict``)."""
    from types import SimpleNamespace

    from bdprune.repair import PERSISTENCE_BAR
    from bdprune.class_probe import EXPLAINED_BAR, MIN_GAP, persistence
    from bdprune.verdict import KL_RATIO_BAR, kl_ratio

    layers = [SimpleNamespace(name=l["name"], scores=l["scores"]) for l in scan["layers"]]
    every = np.array([v for l in layers for v in l.scores])
    logs = np.log(np.maximum(every, 1e-12))
    med = np.median(logs)
    mad = 1.4826 * np.median(np.abs(logs - med))
    ratio = kl_ratio(SimpleNamespace(layers=layers))[0]
    out = {"max-kl": float(every.max()), "log-kl robust z": float((logs.max() - med) / mad), "max/median kl": float(every.max() / np.median(every)),
           "kl-ratio (max/p90)": ratio}
    if probe is not None:
        out["probe gap"] = probe["gap"]
        usable = [e for e, cand in zip(probe["explained"], probe["candidates"]) if cand[2] >= MIN_GAP]
        out["explained (any candidate)"] = max(probe["explained"])
        out["explained"] = max(usable, default=0.0)
        out["verdict (explained / bar)"] = out["explained"] / EXPLAINED_BAR
        out["first rule: max(kl-ratio / 12, explained / bar)"] = max(ratio / KL_RATIO_BAR, out["explained"] / EXPLAINED_BAR)
        cached = SimpleNamespace(success=probe["success"], candidates=[(*cand, None) for cand in probe["candidates"]])
        lead = persistence(cached, MIN_GAP)
        out["persistence (--repair unlearn)"] = max(lead)
        out["unlearn gate: max(explained / bar, persistence / 1)"] = max(out["verdict (explained / bar)"], max(lead) / PERSISTENCE_BAR)
    return out


def probe_class(probe: dict) -> int | None:
    """The class of the usable candidate that explains most (the verdict's suspected target)."""
    from bdprune.class_probe import MIN_GAP

    usable = [(e, cand[1]) for e, cand in zip(probe["explained"], probe["candidates"]) if cand[2] >= MIN_GAP]
    return max(usable)[1] if usable else None


def rows_of_zoo() -> list[dict]:
    out = []
    for meta, scan, probe in load_zoo(probe=True):
        if not took(meta):
            continue
        meta = {**meta, "part": part_of(meta["name"], meta["part"])}
        out.append({**meta, "stats": statistics_of(scan, probe), "probe_target": probe_class(probe),
                    "seconds": scan["scan_seconds"] + probe["seconds"] + probe["explain_seconds"], "scan_seconds": scan["scan_seconds"],
                    "probe_seconds": probe["seconds"] + probe["explain_seconds"]})
    return out


# The evaluation models whose probes had been looked at when the first rule (max of kl-ratio / 12 and
# explained / bar) was replaced by the explained part alone, because a clean eval model passed the
# kl-ratio bar: "eval-seen". Every other eval model was probed after the change: "eval-fresh".
EVAL_SEEN = frozenset(('cmnist32-smallcnn8-badnets-r01-t1-s10', 'cmnist32-smallcnn8-badnets-r05-t8-s11', 'cmnist32-smallcnn8-badnets-r10-t5-s12', 'cmnist32-smallcnn8-blended-r01-t5-s13', 'cmnist32-smallcnn8-blended-r05-t2-s14', 'cmnist32-smallcnn8-blended-r10-t9-s15', 'cmnist32-smallcnn8-clean-s0', 'cmnist32-smallcnn8-clean-s1', 'cmnist32-smallcnn8-clean-s2', 'cmnist32-smallcnn8-clean-s3', 'cmnist32-smallcnn8-sig-r01-t9-s16', 'cmnist32-smallcnn8-sig-r05-t6-s17', 'mnist28-vgg11_bn1d8-badnets-r01-t4-s110', 'mnist28-vgg11_bn1d8-badnets-r05-t1-s111', 'mnist28-vgg11_bn1d8-badnets-r10-t8-s112', 'mnist28-vgg11_bn1d8-blended-r01-t8-s113', 'mnist28-vgg11_bn1d8-blended-r05-t5-s114', 'mnist28-vgg11_bn1d8-blended-r10-t2-s115', 'mnist28-vgg11_bn1d8-clean-s0', 'mnist28-vgg11_bn1d8-clean-s1', 'mnist28-vgg11_bn1d8-clean-s2', 'mnist28-vgg11_bn1d8-clean-s3', 'mnist28-vgg11_bn1d8-sig-r01-t2-s116', 'mnist28-vgg11_bn1d8-sig-r05-t9-s117', 'mnist28-vgg11_bn1d8-sig-r10-t6-s118', 'mnist28-vgg11_bn1d8-warp-r01-t6-s119', 'mnist28-vgg11_bn1d8-warp-r05-t3-s120', 'mnist28-vgg11_bn1d8-warp-r10-t0-s121'))


def part_of(name: str, part: str) -> str:
    return part if part == "cal" else ("eval-seen" if name in EVAL_SEEN else "eval-fresh")


def report(rows: list[dict], stat: str = "verdict (explained / bar)") -> str:
    TARGET_EXPLAINED = 0.1  # the old verdict named the probe's class when its explained share was at least this

    lines = []
    bd = lambda sel: [r for r in sel if r["attack"] != "clean"]  # noqa: E731
    cl = lambda sel: [r for r in sel if r["attack"] == "clean"]  # noqa: E731
    lines.append("| statistic | part | AUROC | clean max | backdoored caught above the clean max |")
    lines.append("|---|---|---:|---:|---:|")
    for key in rows[0]["stats"]:
        for part in PARTS:
            sel = [r for r in rows if r["part"] in part.split("+")]
            pos, neg = [r["stats"][key] for r in bd(sel)], [r["stats"][key] for r in cl(sel)]
            if not pos or not neg:
                continue
            top = max(neg)
            lines.append(f"| {key} | {part} | {auroc(pos, neg):.3f} | {top:.3g} | {sum(v > top for v in pos)}/{len(pos)} |")
    lines.append("")
    lines.append("At the default (verdict > 1): backdoored caught / clean flagged, and the suspected target "
                 f"(named when the explained share >= {TARGET_EXPLAINED:g}) right / named, per part and group:")
    lines.append("")
    lines.append("| part | group | backdoored caught | clean flagged | target right / named | median cost per model (s) |")
    lines.append("|---|---|---:|---:|---:|---:|")
    groups = [("all", lambda r: True)]
    groups += [(f"kind={k}", (lambda k: lambda r: r["kind"] == k)(k)) for k in KINDS]
    groups += [(f"attack={a}", (lambda a: lambda r: r["attack"] in (a, "clean"))(a)) for a in ATTACKS]
    groups += [(f"rate={rate:.0%}", (lambda x: lambda r: r["rate"] in (x, 0.0))(rate)) for rate in RATES]
    for part in PARTS:
        for label, pred in groups:
            sel = [r for r in rows if r["part"] in part.split("+") and pred(r)]
            if not bd(sel):
                continue
            caught = [r for r in bd(sel) if r["stats"][stat] > 1]
            flagged = [r for r in cl(sel) if r["stats"][stat] > 1]
            named = [r for r in caught if r["stats"]["explained"] >= TARGET_EXPLAINED]
            right = [r for r in named if r["probe_target"] == r["target"]]
            cost = np.median([r["seconds"] for r in sel])
            clean = f"{len(flagged)}/{len(cl(sel))}" if label.startswith(("all", "kind")) else "-"
            lines.append(f"| {part} | {label} | {len(caught)}/{len(bd(sel))} | {clean} | {len(right)}/{len(named)} | {cost:.1f} |")
    return "\n".join(lines)


BEGIN, END = "<!-- verdict2:begin -->", "<!-- verdict2:end -->"
PARTS = ("cal", "eval-seen", "eval-fresh", "eval-seen+eval-fresh")


def results_section(rows: list[dict]) -> str:
    """The RESULTS.md section: how the zoo was made, then :func:`report`."""
    from bdprune.class_probe import EXPLAINED_BAR
    from bdprune.verdict import KL_RATIO_BAR

    n = {part: (sum(r["part"] == part and r["attack"] != "clean" for r in rows), sum(r["part"] == part and r["attack"] == "clean" for r in rows))
         for part in PARTS[:3]}
    untook = [s for s in specs() if model_path(s).with_suffix(".json").exists()
              and not took(json.loads(model_path(s).with_suffix(".json").read_text()))]
    return "\n".join([
        BEGIN,
        "## Checkpoint-level verdict, scale-free (issue 14)",
        "",
        "Made by `python benchmarks/verdict_zoo.py train`, `probe` and `report --write` (models, scans and probes cached",
        "under benchmarks/cache/verdict/, git-ignored). Three kinds of input: scikit-learn's 8x8 digits (`digits8`),",
        "28x28 MNIST (`mnist28`) and MNIST coloured and padded to 3x32x32 (`cmnist32`); BadNets, Blended, SIG and",
        "WaNet-style warp (`warp:`) at 1%, 5% and 10% poisoning plus 4 clean seeds per architecture; smallcnn,",
        "resnet18 and vgg11_bn1d at width 8 (smallcnn also 16), trained with `bdprune.training.train_classifier`.",
        "Calibration part (`cal`): all digits8 models and mnist28's smallcnn; evaluation part (`eval`): every other",
        "model, never looked at while choosing the statistic or its bars. Backdoors whose ASR stayed under 50% are",
        f"left out ({len(untook)} models). Models here: cal {n['cal'][0]} backdoored / {n['cal'][1]} clean, eval-seen "
        f"{n['eval-seen'][0]} / {n['eval-seen'][1]}, eval-fresh {n['eval-fresh'][0]} / {n['eval-fresh'][1]}.",
        "",
        "The first rule, max(kl-ratio / 12, explained / 0.15), flagged a clean cmnist32 model through its kl-ratio",
        "part (18.3; the calibration clean maximum was 10.4). The shipped rule is the explained part alone (same bar,",
        "chosen on cal); the kl-ratio only decides where the probe cannot run. The eval models whose probes had been",
        "looked at before that change are `eval-seen`; `eval-fresh` models were probed after it and are the",
        "strictly out-of-sample numbers for the shipped rule.",
        "",
        f"Rule shipped (`bdprune/verdict.py`): suspicious when explained / {EXPLAINED_BAR:g} > 1 (kl-ratio / {KL_RATIO_BAR:g} > 1",
        "without a probe); kl-ratio = largest channel KL / the network's 90th-percentile KL; explained = the share of",
        "the network's BN divergence that the class probe's best perturbation explains (bdprune/target.py). Cost per model: the",
        "bnp statistics pass plus the probe (32 clean images, 10 classes, 8 budgets x 5 gradient steps) and one",
        "statistics pass per budget, on one CPU thread of a shared 2-core machine (times are inflated by other jobs).",
        "",
        "Two more choices were made after looking at models outside the calibration part, both before any",
        "eval probe was computed: the probe candidates must lead the next class by >= 10% of the images",
        "(`MIN_GAP`), added because the clean digits model of tests/test_e2e_digits.py (Adam, another recipe)",
        "scored 0.31 through a candidate that moved no images (gap 0.001); and the explained bar went from 0.25",
        "to 0.15 once that filter had lowered the calibration clean maximum from 0.18 to 0.097.",
        "",
        "Outside the zoo, at the defaults: the built-in demo model (mnist_resnet, BadNets 10%, target 0) scores",
        "explained 0.91 -> suspicious, target 0 (kl-ratio 4.4 alone would have missed it); its shipped clean twin",
        "(same split and recipe, nothing poisoned, 5 epochs) scores -0.03 -> clean; the digits models of",
        "tests/test_e2e_digits.py: BadNets 0.68 -> suspicious (target 0, right), clean 0.0 -> clean.",
        "",
        "`--repair unlearn` (issue 13) also acts when one class's persistence (its probe leads of >= 10% of the",
        "images summed over the budgets) reaches 1.0, a bar chosen on the removal zoo's tune part (benchmarks/removal.py),",
        "not here: the rows `persistence` and `unlearn gate` show what that looser gate would do on this zoo (a clean",
        "model above 1 would be unlearned needlessly; the CI verdict is unchanged).",
        "",
        report(rows),
        END,
    ])


def write_results(text: str, path: Path = HERE / "RESULTS.md") -> None:
    old = path.read_text()
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("train", "probe", "report", "list"))
    p.add_argument("--kind", action="append", choices=tuple(KINDS))
    p.add_argument("--part", choices=("cal", "eval"))
    p.add_argument("--arch", action="append", help="e.g. vgg11_bn1d8 (architecture and width)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--write", action="store_true", help="report: write the section into benchmarks/RESULTS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    todo = [s for s in specs() if (not args.kind or s.kind in args.kind) and (not args.part or s.part == args.part)
            and (not args.arch or f"{s.arch}{s.width}" in args.arch)]
    if args.command == "list":
        for s in todo:
            print(s.part, s.name, s.trigger or "")
        return
    if args.command == "report":
        rows = rows_of_zoo()
        if args.write:
            write_results(results_section(rows))
        print(report(rows))
        if args.verbose:
            for r in rows:
                print(r["part"], r["name"], r["asr"], r["probe_target"], " ".join(f"{k}={v:.3g}" for k, v in r["stats"].items()))
        return
    if args.command == "probe":
        for spec in todo:
            if model_path(spec).with_suffix(".json").exists() and not probe_path(spec).exists():
                doc = probe_one(spec)
                print(f"{spec.part} {spec.name}: probe class {doc['target']} gap {doc['gap']:.2f} in {doc['seconds']:.1f}s", flush=True)
        return
    for kind in dict.fromkeys(s.kind for s in todo):
        data = load_kind(kind)
        for spec in (s for s in todo if s.kind == kind):
            fresh = not model_path(spec).with_suffix(".json").exists()
            meta = train_one(spec, data)
            scan = scan_one(spec)
            if fresh:
                top = max(max(layer["scores"]) for layer in scan["layers"])
                print(f"{spec.part} {spec.name}: ACC {meta['acc']:.1f} ASR {meta['asr']} train {meta['train_seconds']}s "
                      f"max KL {top:.4f}", flush=True)


if __name__ == "__main__":
    main()
