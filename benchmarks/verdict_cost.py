"""What the default `bdprune scan` (bnp and its verdict, the trigger probe) costs against a bare
forward pass over the same 500 images (issue 22): whole processes side by side, each under
`/usr/bin/time -v`, alternated, on three models with random weights (their cost does not depend on
the weights): the CIFAR ResNet-18 (width 64, 3x32x32, 10 classes), the same with a 1000-way
classifier, and torchvision's ResNet-18 layout at 224x224 with 1000 classes.

    python benchmarks/verdict_cost.py [--rounds 3] [--models cifar10,cifar1000,imagenet] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _report import HERE, provenance, write_section
from fleet import _bn_state, _env, timed

CACHE = HERE / "cache" / "verdict_cost"
SAMPLES = 500
MODELS = {
    # name: (arch for bdprune, image shape, classes)
    "cifar10": ("resnet18", (3, 32, 32), 10),
    "cifar1000": ("resnet18", (3, 32, 32), 1000),
    "imagenet": (str(HERE / "imagenet_resnet.py") + ":resnet18", (3, 224, 224), 1000),
}
BARE = '''"""The bare pass: load the same checkpoint and images, one forward pass over them, batch 128."""
import sys
import numpy as np
import torch
from safetensors.torch import load_file
from bdprune.archs import build_model

state = load_file(sys.argv[2])
model, _ = build_model(sys.argv[1], state)
model.load_state_dict(state)
model.eval()
with np.load(sys.argv[3]) as npz:
    images = torch.from_numpy(npz["images"]).float().div_(255)
with torch.inference_mode():
    for start in range(0, len(images), 128):
        model(images[start:start + 128])
'''


def make(name: str) -> tuple[Path, Path, Path]:
    """The model's checkpoint (random weights, BN statistics from random images), 500 uint8 images, the bare script."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from bdprune.archs import build_model

    arch, shape, classes = MODELS[name]
    CACHE.mkdir(parents=True, exist_ok=True)
    ckpt, data, bare = CACHE / f"{name}.safetensors", CACHE / f"{name}.npz", CACHE / "bare.py"
    if not ckpt.exists():
        torch.manual_seed(0)
        model, _ = build_model(arch, None, num_classes=classes)
        save_file(_bn_state(model, shape, 0), str(ckpt))
    if not data.exists():
        rng = np.random.default_rng(0)
        np.savez(data, images=rng.integers(0, 256, (SAMPLES, *shape), dtype=np.uint8), labels=np.arange(SAMPLES) % classes)
    bare.write_text(BARE)
    return ckpt, data, bare


def measure(name: str, rounds: int) -> dict[str, list[dict]]:
    arch = MODELS[name][0]
    ckpt, data, bare = make(name)
    env = _env(None)
    cmds = {"bare forward pass": [sys.executable, str(bare), arch, str(ckpt), str(data)],
            "bdprune scan (bnp + verdict)": [sys.executable, "-m", "bdprune", "scan", str(ckpt), "--arch", arch, "--data", str(data),
                                             "--samples", str(SAMPLES), "-f", "json"]}
    timed(cmds["bare forward pass"], env)  # warm the file cache
    runs: dict[str, list[dict]] = {k: [] for k in cmds}
    for i in range(rounds):
        for key, cmd in cmds.items():
            runs[key].append(timed(cmd, env))
            print(f"{name} round {i + 1} {key}: {runs[key][-1]}", file=sys.stderr, flush=True)
    return runs


TARGETS = {"cifar10": 4.0, "cifar1000": 6.0, "imagenet": 6.0}


def rows(name: str, runs: dict[str, list[dict]]) -> list[str]:
    bare, scan = runs["bare forward pass"], runs["bdprune scan (bnp + verdict)"]
    ratio = [s["wall"] / b["wall"] for s, b in zip(scan, bare)]
    mem = [s["rss_mib"] / b["rss_mib"] for s, b in zip(scan, bare)]
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    t, m = statistics.median(ratio), statistics.median(mem)
    return [f"| {name} | {med(bare, 'wall'):.1f} | {med(scan, 'wall'):.1f} | {t:.2f}x ({'met' if t <= TARGETS[name] else '**missed**'}, "
            f"target {TARGETS[name]:g}x; {min(ratio):.2f}-{max(ratio):.2f}) | {med(bare, 'rss_mib'):.0f} | {med(scan, 'rss_mib'):.0f} | "
            f"{m:.2f}x ({'met' if m <= 1.5 else '**missed**'}, target 1.5x) |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    body = ["| model | bare pass s | scan s | scan / bare (wall) | bare peak MiB | scan peak MiB | scan / bare (peak RSS) |",
            "|---|---:|---:|---|---:|---:|---|"]
    for name in args.models.split(","):
        body += rows(name, measure(name, args.rounds))
    text = "\n".join([
        "## Cost of the verdict: a whole `bdprune scan` against a bare forward pass (issue 22)", "",
        provenance(), "",
        f"{SAMPLES} random images, random weights (BN statistics from random images), batch 128, torch's default threads; each",
        "cell the median over the rounds of fresh processes under `/usr/bin/time -v`, bare and scan alternated; ratios per round.",
        "The scan is bnp's statistics pass plus the trigger probe (2 budgets x 9 Adam steps on 32 images, judged on 64).", "",
        *body,
    ])
    print(text)
    if args.write:
        write_section("verdict-cost", text)


if __name__ == "__main__":
    main()
