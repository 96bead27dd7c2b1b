"""Backdoor removal on the papers' own architecture (issue 13): ResNet-18 at width 64 on 3x32x32 RGB
input, the CIFAR-10 ResNet-18 of BNP, CLP, ANP and RNP. No CIFAR-10 here (nothing downloads), so the
data is the verdict zoo's coloured MNIST (``cmnist32``: digits padded to 32x32 with a random
foreground and background colour per image; 3,000 train / 500 clean / 1,000 test images).

    python benchmarks/removal_paper_arch.py            # train (cached), remove, print, write RESULTS.md

Each model is trained with the verdict zoo's recipe (benchmarks/verdict_zoo.py, 6 epochs) and then
pruned exactly as the README recommends, ``prune --repair unlearn`` at its defaults, on the 500
clean images. Nothing was tuned on these models: they were trained after every choice was made.
Models and rows are cached under benchmarks/cache/verdict/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import verdict_zoo as vz

WIDTH = 64
SPECS = [
    vz.Spec("cmnist32-resnet1864-clean-s500", "cmnist32", "resnet18", WIDTH, "clean", 0.0, None, None, 500, "paper"),
    vz.Spec("cmnist32-resnet1864-badnets-r10-t3-s510", "cmnist32", "resnet18", WIDTH, "badnets", 0.10, 3,
            vz.triggers("cmnist32", 0)["badnets"], 510, "paper"),
    vz.Spec("cmnist32-resnet1864-blended-r05-t6-s511", "cmnist32", "resnet18", WIDTH, "blended", 0.05, 6,
            vz.triggers("cmnist32", 0)["blended"], 511, "paper"),
]


def acc_asr(path, spec: vz.Spec, data) -> tuple[float, float | None]:
    """ACC and ASR (:func:`verdict_zoo.acc_asr`) of the safetensors file at ``path``."""
    from safetensors.torch import load_file

    from bdprune.archs import build_model

    model, _ = build_model(spec.arch, None, arch_args=spec.arch_args)
    model.load_state_dict(load_file(str(path)))
    return vz.acc_asr(model, spec, data)


def remove(spec: vz.Spec, data) -> dict:
    """``prune --repair unlearn`` at its defaults on the clean images; the row (cached)."""
    from bdprune.api import prune_checkpoint
    from bdprune.repair import RepairSettings

    cached = vz.CACHE / "removal" / f"{spec.name}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    meta = vz.train_one(spec, data)
    out = vz.CACHE / "removal" / f"{spec.name}.unlearned.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outcome = prune_checkpoint(vz.model_path(spec), spec.arch, data=vz.clean_npz(spec.kind), samples=500, output=out, force=True,
                               device="cpu", arch_args=spec.arch_args, show_progress=False, repair=RepairSettings("unlearn"))
    seconds = time.perf_counter() - t0
    acc, asr = acc_asr(out, spec, data)
    row = {"model": spec.name, "attack": spec.attack, "rate": spec.rate, "train_seconds": meta["train_seconds"],
           "acc_before": meta["acc"], "asr_before": meta["asr"], "acc_after": acc, "asr_after": asr,
           "pruned": sum(map(len, outcome.channels.values())), "channels": outcome.channels_total, "seconds": seconds,
           "notes": [n for n in outcome.notes if n.startswith("--repair unlearn")]}
    cached.write_text(json.dumps(row, indent=1))
    return row


def main() -> None:
    from _report import provenance, write_section

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=None, help="one model's name (to run models in parallel; prints, writes nothing)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = vz.load_kind("cmnist32")
    rows = []
    for spec in [s for s in SPECS if args.only in (None, s.name)]:
        rows.append(remove(spec, data))
        r = rows[-1]
        print(f"[{time.strftime('%H:%M:%S')}] {r['model']}: ACC {r['acc_before']:.2f}->{r['acc_after']:.2f} "
              f"ASR {r['asr_before']}->{r['asr_after']} ({r['seconds']:.0f}s)", flush=True)
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["| model | ACC before -> after | ASR before -> after | success (ASR <= 5%, drop <= 2) | channels pruned | "
             "train s | remove s | what unlearn found |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "-" if r["asr_before"] is None else ("yes" if r["asr_after"] <= 5 and r["acc_before"] - r["acc_after"] <= 2 else "no")
        lines.append(f"| {r['model']} | {f(r['acc_before'])} -> {f(r['acc_after'])} | {f(r['asr_before'])} -> {f(r['asr_after'])} | "
                     f"{ok} | {r['pruned']}/{r['channels']} | {r['train_seconds']:.0f} | {r['seconds']:.0f} | "
                     f"{'; '.join(r['notes']) or '-'} |")
    body = ("## Backdoor removal on the papers' architecture: ResNet-18 width 64, 3x32x32 (issue 13)\n\n" + provenance("cpu")
            + f"\nLoad average at the end: {os.getloadavg()[0]:.1f}. " + __doc__.split("\n\n")[0].replace("\n", " ")
            + " `prune --repair unlearn` at its defaults (bnp u = 3, then the unlearning), trained after every choice was "
            "made (never tuned on).\n\n" + "\n".join(lines) + "\n")
    if args.only is None:
        write_section("removal-paper-arch", body)
    print(body)


if __name__ == "__main__":
    main()
