"""Detection zoo (issue 22): clean and backdoored models of every attack family, on five kinds of
input, to choose the checkpoint verdict on one part (``cal``) and measure it on the other
(``eval``), which no choice may look at.

Kinds of input (each split once, seeded, into training, clean (the verdict's samples) and test):

* ``digits8``: scikit-learn's 8x8 digits (1 x 8 x 8; 1,297 train / 300 clean / 200 test);
* ``mnist28``: MNIST digits from /work/shared/data/mnist10k.npz (1 x 28 x 28; 3,000 / 500 / 1,000);
* ``cmnist32``: the same digits coloured and padded (3 x 32 x 32; fg/bg colour drawn per image);
* ``many100``: two digits in two colour planes (R = first, G = second; 3 x 28 x 28), class
  10 a + b: 100 classes, 20,000 training composites drawn from the training digits;
* ``many1000``: three digits in R, G and B, class 100 a + 10 b + c: 1,000 classes, 30,000
  training composites. (Side by side would need a classifier that keeps position; every
  built-in architecture pools globally, so the digits share the pixel grid instead.)

Attack families (``FAMILIES``): BadNets, Blended, SIG, WaNet-style warp, random-position patch,
low-frequency, Adaptive-Blend with as many cover images (trigger, label kept) as poisoned ones,
an input-dependent (dynamic) trigger, all-to-all (y -> y + 1), two triggers for two targets,
and clean-label SIG (only target-class images carry it, labels kept); at 1%, 5% and 10% of the
training set, targets drawn per model. Clean models (``CLEAN_VARIANTS``): three plain seeds and
five that are innocent but odd: imbalanced classes, 20% noisy labels, 4x longer training,
shift augmentation (the running statistics then come from shifted images) and Adam (the
recipe of tests/test_e2e_digits.py, whose clean model was once falsely flagged).

Parts: every third model of each (kind, architecture) list is ``cal`` (the offset rotates from one
architecture to the next, so each clean variant and family is in both parts); the rest ``eval``.

    python benchmarks/detection_zoo.py train [--kind K] [--part P] [--arch A]   # train what is missing
    python benchmarks/detection_zoo.py scan [--part P] [--thorough]   # `bdprune scan` at its defaults (or --thorough) on every model (cached)
    python benchmarks/detection_report.py [--write] [--thorough]      # the tables (--write: into benchmarks/RESULTS.md)
    python benchmarks/detection_zoo.py list
Cache: benchmarks/cache/detection/ (git-ignored): models/NAME.safetensors with NAME.json
(spec, ACC, ASR, training time), data/KIND_clean.npz (the verdict's samples), scans/NAME.json
(the scan's verdict and its cost), scans_thorough/NAME.json (the same with --thorough).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "detection"
MNIST = Path("/work/shared/data/mnist10k.npz")
SPLIT_SEED = 22
ASR_TOOK = 50.0  # a backdoor "took" when its ASR is at least this; the others are left out

KINDS = {
    # kind: (train, clean, test, epochs, classes, channels)
    "digits8": (1297, 300, 200, 30, 10, 1),
    "mnist28": (3000, 500, 1000, 6, 10, 1),
    "cmnist32": (3000, 500, 1000, 6, 10, 3),
    "many100": (20000, 500, 1000, 6, 100, 3),
    "many1000": (30000, 500, 1000, 8, 1000, 3),
}
ARCHS = {
    "digits8": (("smallcnn", 8), ("resnet18", 8)),
    "mnist28": (("smallcnn", 8), ("vgg11_bn1d", 8), ("resnet18", 8), ("preactresnet18", 8)),
    "cmnist32": (("smallcnn", 8), ("vgg11_bn1d", 8), ("resnet18", 8)),
    "many100": (("smallcnn", 16),),  # one architecture each: a model trains for minutes on one thread
    "many1000": (("smallcnn", 16),),
}
RATES = (0.01, 0.05, 0.10)
FAMILIES = ("badnets", "blended", "sig", "warp", "randpatch", "lowfreq", "adaptive", "dynamic", "all2all", "multi", "cleanlabel")
EXTRA_LOW_RATE = ("badnets", "blended", "randpatch")  # a second, 1%-poisoned model of these per architecture
CLEAN_VARIANTS = ("plain0", "plain1", "plain2", "imbalanced", "noisy", "long", "augmented", "adam")


@dataclass
class Spec:
    """One zoo model: how its training data was poisoned (``poisons``: (mode, train trigger, test
    trigger, target, rate) each) or, for a clean model, which odd recipe trained it."""

    name: str
    kind: str
    arch: str
    width: int
    family: str  # an attack family, or "clean"
    variant: str  # clean: a CLEAN_VARIANTS entry; backdoored: "r01" etc.
    rate: float
    poisons: list[tuple[str, str, str, int, float]] = field(default_factory=list)
    seed: int = 0
    part: str = "cal"

    @property
    def arch_args(self) -> dict[str, str]:
        return {"width": str(self.width), "in_channels": str(KINDS[self.kind][5])}

    @property
    def targets(self) -> list[int] | str:
        """The attack's target classes ("all" for all-to-all); [] for a clean model."""
        if self.family == "all2all":
            return "all"
        return sorted({p[3] for p in self.poisons})


def triggers(kind: str, variant: int) -> dict[str, tuple[str, str]]:
    """(train trigger, test trigger) of each single-trigger family for ``kind``; ``variant`` (the
    architecture's index) moves the patch, reseeds the noise and changes the stripe frequency."""
    small = kind == "digits8"
    corner = ("br", "tl", "tr", "bl")[variant % 4]
    colour = "1" if KINDS[kind][5] == 1 else ("#ff0000", "#00ff00", "#ffff00", "#00ffff")[variant % 4]
    size = 2 if small else 3
    patch = f"patch:size={size},pos={corner},margin={0 if small else 1},color={colour}"
    adaptive = f"adaptive:pieces=4,keep=0.5,alpha=0.15,seed={variant + 3}"
    same = lambda spec: (spec, spec)  # noqa: E731
    return {
        "badnets": same(patch),
        "blended": same(f"blend:noise,seed={variant + 1},alpha=0.15"),
        "sig": same(f"sig:delta=0.1,freq={(6, 3, 5, 2)[variant % 4] if small else (6, 4, 5, 3)[variant % 4]}"),
        "warp": same(f"warp:k=4,s={2 if small else 1.5},seed={variant + 1}"),
        "randpatch": (f"patch:size={size},pos=random,seed={variant + 5},color={colour}",
                      f"patch:size={size},pos=random,seed={variant + 50},color={colour}"),
        "lowfreq": same(f"lowfreq:k=3,amp={0.3 if small else 0.2},seed={variant + 2}"),
        "adaptive": (adaptive, adaptive.replace("keep=0.5,alpha=0.15", "keep=1,alpha=0.2")),
        "dynamic": same(f"dynamic:alpha=0.2,seed={variant + 4}"),
        "all2all": same(patch),
        "cleanlabel": same(f"sig:delta=0.3,freq={(6, 3, 5, 2)[variant % 4] if small else (6, 4, 5, 3)[variant % 4]}"),
    }


def specs() -> list[Spec]:
    """Every zoo model, in a fixed order: the first round's models, parts assigned round-robin
    within each architecture, then the fresh holdouts' (part ``fresh``: new seeds, hence new
    weights and targets, trained after the rule frozen on ``cal`` was chosen; part ``fresh2``: the
    same again from newer seeds, for the rule recalibrated on ``cal``, ``eval`` and ``fresh``;
    part ``fresh3``: again, for the rule of the third round, chosen on every earlier part;
    FRESH_KINDS only)."""
    return _round(0) + _round(1) + _round(2) + _round(3)


FRESH_KINDS = ("digits8", "mnist28", "cmnist32")  # the many-class kinds train for hours on this CPU
THOROUGH_KINDS = tuple(k for k, v in KINDS.items() if v[4] <= 10)  # `scan --thorough` here: its per-class probe takes minutes on 100 classes
FRESH_SEED = 500_000
PARTS = ("cal", "eval", "fresh", "fresh2", "fresh3")


def _round(round_: int) -> list[Spec]:
    out = []
    for kind, archs in ARCHS.items():
        if round_ and kind not in FRESH_KINDS:
            continue
        classes = KINDS[kind][4]
        for a, (arch, width) in enumerate(archs):
            tag = f"{kind}-{arch}{width}"
            trig = triggers(kind, a)
            rng = np.random.default_rng(1000 * (list(KINDS).index(kind) + 1) + a + 77 * round_)
            base = FRESH_SEED * round_ + 10_000 * a
            suffix = f"-h{round_}" if round_ else ""
            items: list[Spec] = []
            for v, variant in enumerate(CLEAN_VARIANTS):
                items.append(Spec(f"{tag}-clean-{variant}{suffix}", kind, arch, width, "clean", variant, 0.0, seed=base + v))
            plan = [(f, RATES[(f_i + a) % 3]) for f_i, f in enumerate(FAMILIES)] + [(f, 0.01) for f in EXTRA_LOW_RATE]
            for i, (family, rate) in enumerate(plan):
                t1, t2 = (int(t) for t in rng.choice(classes, size=2, replace=False))
                rate = 0.08 if family == "cleanlabel" else rate  # most of the target class (needs a strong signal)
                seed = base + 100 + i
                if family == "multi":
                    p1, p2 = trig["badnets"], trig["blended"]
                    poisons = [("all-to-one", p1[0], p1[1], t1, rate), ("all-to-one", p2[0], p2[1], t2, rate)]
                elif family == "adaptive":
                    tr, te = trig["adaptive"]
                    poisons = [("all-to-one", tr, te, t1, rate), ("cover", tr, te, t1, rate)]
                else:
                    mode = {"all2all": "all-to-all", "cleanlabel": "clean-label"}.get(family, "all-to-one")
                    tr, te = trig[family]
                    poisons = [(mode, tr, te, t1, rate)]
                tail = "" if family == "all2all" else "-t" + "+".join(str(t) for t in sorted({p[3] for p in poisons if p[0] != "cover"}))
                items.append(Spec(f"{tag}-{family}-r{round(rate * 100):02d}{tail}-s{seed}", kind, arch, width, family,
                                  f"r{round(rate * 100):02d}", rate, poisons, seed))
            shift = len({(x.kind, x.arch, x.width) for x in out})  # rotate, so every clean variant and family lands in both parts
            for i, spec in enumerate(items):
                spec.part = PARTS[round_ + 1] if round_ else ("cal" if (i + shift) % 3 == 0 else "eval")
            out += items
    return out


# ---------------------------------------------------------------- data

def _colorize(images: np.ndarray, seed: int) -> np.ndarray:
    """uint8 N x 28 x 28 digits -> float32 N x 3 x 32 x 32: a random fg/bg colour per image."""
    rng = np.random.default_rng(seed)
    n = len(images)
    fg = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    bg = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    swap = fg.mean(1, keepdims=True) < bg.mean(1, keepdims=True)
    fg, bg = np.where(swap, bg, fg), np.where(swap, fg, bg)
    fg, bg = np.clip(fg + 0.25, 0, 1), np.clip(bg - 0.25, 0, 1)
    digit = np.pad(images.astype(np.float32) / 255.0, ((0, 0), (2, 2), (2, 2)))[:, None]
    return (bg + (fg - bg) * digit).astype(np.float32)


def _composites(raw: np.ndarray, labels: np.ndarray, pool: np.ndarray, n: int, digits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``digits`` digits from ``pool``, one per colour plane; class = the digits read as a number."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(pool, size=(n, digits))
    x = np.zeros((n, 3, 28, 28), np.float32)
    y = np.zeros(n, np.int64)
    for j in range(digits):
        x[:, j] = raw[idx[:, j]].astype(np.float32) / 255.0
        y = y * 10 + labels[idx[:, j]]
    return x, y


def load_kind(kind: str) -> dict[str, torch.Tensor]:
    """Float tensors train_x/y, clean_x/y, test_x/y for ``kind``; writes data/KIND_clean.npz once."""
    n_train, n_clean, n_test, *_ = KINDS[kind]
    if kind == "digits8":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[:, None]
        y = d.target.astype(np.int64)
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        parts = {"clean": perm[:n_clean], "test": perm[n_clean : n_clean + n_test], "train": perm[n_clean + n_test :][:n_train]}
        arrays = {name: (x[idx], y[idx]) for name, idx in parts.items()}
    else:
        with np.load(MNIST) as npz:
            raw, labels = npz["images"], npz["labels"].astype(np.int64)
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(raw))
        pools = {"clean": perm[:500], "test": perm[500:1500], "train": perm[1500:]}
        if kind.startswith("many"):
            digits = 2 if kind == "many100" else 3
            sizes = {"clean": n_clean, "test": n_test, "train": n_train}
            arrays = {name: _composites(raw, labels, pool, sizes[name], digits, SPLIT_SEED + i) for i, (name, pool) in enumerate(pools.items())}
        else:
            pools["train"] = pools["train"][:n_train]
            image = (lambda idx: raw[idx].astype(np.float32)[:, None] / 255.0) if kind == "mnist28" else (lambda idx: _colorize(raw[idx], SPLIT_SEED + idx[0]))
            arrays = {name: (image(idx), labels[idx]) for name, idx in pools.items()}
    out = {}
    for name, (xs, ys) in arrays.items():
        out[f"{name}_x"] = torch.from_numpy(np.ascontiguousarray(xs))
        out[f"{name}_y"] = torch.from_numpy(ys)
    path = clean_npz(kind)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=out["clean_x"].numpy(), labels=out["clean_y"].numpy())
    return out


def clean_npz(kind: str) -> Path:
    return CACHE / "data" / f"{kind}_clean.npz"


def model_path(spec: Spec) -> Path:
    return CACHE / "models" / f"{spec.name}.safetensors"


def meta_path(spec: Spec) -> Path:
    return model_path(spec).with_suffix(".json")


# ---------------------------------------------------------------- train

def accuracy(model, x, y) -> float:
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return 100.0 * float((pred == y).double().mean())


def attack_success(model, spec: Spec, data: dict[str, torch.Tensor]) -> list[float]:
    """ASR of each of ``spec``'s poisons (the cover images carry none): the test images whose
    label the attack would change, triggered with the test trigger, sent where it sends them."""
    from bdprune.triggers import parse_trigger

    classes = KINDS[spec.kind][4]
    out = []
    for mode, _, test_trigger, target, _ in spec.poisons:
        if mode == "cover":
            continue
        x, y = data["test_x"], data["test_y"]
        if mode == "all-to-all":
            keep, want = torch.ones_like(y, dtype=torch.bool), (y + 1) % classes
        else:
            keep = y != target
            want = torch.full_like(y, target)
        out.append(accuracy(model, parse_trigger(test_trigger).apply(x[keep]), want[keep]))
    return out


def poisoned_training_set(spec: Spec, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training images and labels after ``spec``'s poisons (disjoint draws), and how many were touched."""
    from bdprune.training import poison
    from bdprune.triggers import parse_trigger

    taken = torch.zeros(len(y), dtype=torch.bool)
    for i, (mode, train_trigger, _, target, rate) in enumerate(spec.poisons):
        ps = poison(x, y, parse_trigger(train_trigger), rate=rate, target=target, seed=spec.seed + i, mode=mode,
                    num_classes=KINDS[spec.kind][4], exclude=taken)
        x, y, taken = ps.images, ps.labels, taken | ps.poisoned
    return x, y, int(taken.sum())


def odd_training_set(spec: Spec, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A clean model's training data: imbalanced (class k keeps 0.8^(k mod 10) of its images) or
    20% of the labels redrawn at random (``noisy``); as given otherwise."""
    g = torch.Generator().manual_seed(spec.seed)
    classes = KINDS[spec.kind][4]
    if spec.variant == "imbalanced":
        keep = torch.rand(len(y), generator=g) < 0.8 ** (y % 10).double()
        return x[keep], y[keep]
    if spec.variant == "noisy":
        y = y.clone()
        flip = torch.rand(len(y), generator=g) < 0.2
        y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=g)
    return x, y


def train_adam(model, x, y, *, epochs: int, seed: int) -> None:
    """The recipe of tests/test_e2e_digits.py: Adam at 1e-2, the last three epochs at 1e-3, batch 64."""
    import torch.nn.functional as F

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        if epoch == epochs - 3:
            for group in opt.param_groups:
                group["lr"] = 1e-3
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 64):
            batch = perm[start : start + 64]
            if len(batch) < 2:
                continue
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def train_one(spec: Spec, data: dict[str, torch.Tensor]) -> dict:
    """Train ``spec`` (cached: its JSON is returned when it exists)."""
    from safetensors.torch import save_file

    from bdprune.archs import build_model
    from bdprune.training import train_classifier

    if meta_path(spec).exists():
        return json.loads(meta_path(spec).read_text())
    x, y = data["train_x"], data["train_y"]
    touched = 0
    if spec.family == "clean":
        x, y = odd_training_set(spec, x, y)
    else:
        x, y, touched = poisoned_training_set(spec, x, y)
    epochs = KINDS[spec.kind][3] * (4 if spec.variant == "long" else 1)
    epochs = round(epochs * len(data["train_y"]) / len(y))  # as many steps as the full set (imbalanced keeps fewer images)
    model, _ = build_model(spec.arch, None, num_classes=KINDS[spec.kind][4], arch_args=spec.arch_args)
    t0 = time.perf_counter()
    if spec.variant == "adam":
        train_adam(model, x, y, epochs=max(epochs, 6), seed=spec.seed)
    else:
        train_classifier(model, x, y, epochs=epochs, seed=spec.seed, augment=2 if spec.variant == "augmented" else 0)
    seconds = time.perf_counter() - t0
    acc = accuracy(model, data["test_x"], data["test_y"])
    asr = attack_success(model, spec, data)
    model_path(spec).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(model_path(spec)))
    meta = {**asdict(spec), "arch_args": spec.arch_args, "targets": spec.targets, "touched_images": touched, "train_images": len(x),
            "epochs": epochs, "train_seconds": round(seconds, 1), "acc": acc, "asr": asr}
    meta_path(spec).write_text(json.dumps(meta, indent=1))
    return meta


def took(meta: dict) -> bool:
    """Clean, or a backdoor whose every poison reached ASR_TOOK."""
    return meta["family"] == "clean" or (bool(meta["asr"]) and min(meta["asr"]) >= ASR_TOOK)


def scan_path(spec: Spec, thorough: bool = False) -> Path:
    return CACHE / ("scans_thorough" if thorough else "scans") / f"{spec.name}.json"


def scan_one(spec: Spec, thorough: bool = False) -> dict:
    """``bdprune scan MODEL --arch A --data CLEAN`` at its defaults (bnp and its verdict), or with
    ``--thorough``, through the library the CLI runs; the verdict, its parts and the wall time (cached)."""
    from bdprune.api import scan_checkpoints

    path = scan_path(spec, thorough)
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    [result] = scan_checkpoints([model_path(spec)], spec.arch, data=clean_npz(spec.kind), device="cpu", arch_args=spec.arch_args,
                                show_progress=False, thorough=thorough).results
    doc = {"name": spec.name, "seconds": time.perf_counter() - t0, "verdict": result.verdict.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


def selected(args) -> list[Spec]:
    return [s for s in specs() if (not args.kind or s.kind in args.kind) and (not args.part or s.part == args.part)
            and (not args.arch or f"{s.arch}{s.width}" in args.arch) and (not args.family or s.family in args.family)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("train", "scan", "list"))
    p.add_argument("--kind", action="append", choices=tuple(KINDS))
    p.add_argument("--part", choices=PARTS)
    p.add_argument("--arch", action="append", help="e.g. vgg11_bn1d8 (architecture and width)")
    p.add_argument("--family", action="append", choices=FAMILIES + ("clean",))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--thorough", action="store_true", help="scan: `bdprune scan --thorough` (10-class kinds only)")
    p.add_argument("--shard", default=None, help="I/N: only every N-th model starting at I (run N processes side by side)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    todo = selected(args)
    if args.shard:
        i, n = (int(v) for v in args.shard.split("/"))
        todo = todo[i::n]
    if args.command == "list":
        for s in todo:
            print(s.part, s.name, json.dumps(s.poisons))
        print(len(todo), "models")
        return
    if args.command == "scan":
        for spec in todo:
            if args.thorough and spec.kind not in THOROUGH_KINDS:
                continue
            if meta_path(spec).exists() and took(json.loads(meta_path(spec).read_text())) and not scan_path(spec, args.thorough).exists():
                doc = scan_one(spec, args.thorough)
                v = doc["verdict"]
                print(f"{spec.part} {spec.name}: {v['label']} {v['statistic']:.2f} target {v['target']} {doc['seconds']:.1f}s", flush=True)
        return
    for kind in dict.fromkeys(s.kind for s in todo):
        data = load_kind(kind)
        for spec in (s for s in todo if s.kind == kind):
            if meta_path(spec).exists():
                continue
            meta = train_one(spec, data)
            asr = ",".join(f"{a:.1f}" for a in meta["asr"]) or "-"
            print(f"{spec.part} {spec.name}: ACC {meta['acc']:.1f} ASR {asr} took {took(meta)} train {meta['train_seconds']}s", flush=True)


if __name__ == "__main__":
    main()
