"""Published purifications beside `prune --repair unlearn` on the same models and the same clean
samples (500; 300 for 8x8 digits) (issue 23): FST, SAU and Neural Cleanse's unlearning, each at its paper's defaults
(bdprune/purify/), against bdprune's recommended recipe (bnp at u = 3, then unlearn, defaults, which
re-estimate the BN running statistics on the clean samples after training), the same without that
refit (", no BN refit": as it ran before; chosen on the "cal" part) and the opt-in `--repair-distill 1`.
Nothing is tuned on the holdout (the detection zoo's "eval" part); SAU and NC ran on 7 of its 10 clean
models (their cost). `--part cal` (where the repair's choices are made) and `--part fresh3` (a holdout
trained after them) write sections of their own.

    python benchmarks/purification.py [--kind mnist28] [--arch smallcnn] [--part eval] [--write]

Models: benchmarks/detection_zoo.py's 10-class ones (train them first), those whose backdoor took
and the clean ones. Each is repaired through the library the CLI runs (benchmarks/removal_many.py
`measure`, rows cached there); ACC and ASR on the kind's 1,000 test images. Success = every
target's ASR after <= 5% with ACC drop <= 2 points. Cost: the repair's seconds over one bare
forward pass of the model over the 500 clean samples (batch 128), measured in the same process.
The residual check (every repair's, `residual_trigger`) agrees when it says "yes" exactly when
ASR after > 5%. Re-learning (the retuning attack of Min et al., NeurIPS 2023, after which PAM, NeurIPS 2024, was
built): the repaired model fine-tuned 5 epochs (SGD 0.01, momentum 0.9, batch 128) on the 500
clean samples plus 5 poisoned ones (the first poison's train trigger on 5 non-target clean
samples, relabelled to its target; all-to-all: to label + 1); the ASR after it says how much of
the backdoor comes back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import detection_zoo as zoo
import removal_many
from _report import provenance, write_section

VARIANTS = ("bnp+unlearn", "bnp+unlearn, no BN refit", "fst", "sau", "nc")
RELEARN_POISONED, RELEARN_EPOCHS = 5, 5


def forward_seconds(spec: zoo.Spec, data: dict) -> float:
    """Seconds of one bare forward pass of the model over the 500 clean samples (batch 128)."""
    model, images = _load(zoo.model_path(spec), spec), data["clean_x"]
    with torch.inference_mode():
        model(images[:128])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(images), 128):
            model(images[i : i + 128])
    return time.perf_counter() - t0


def _load(path, spec: zoo.Spec):
    from safetensors.torch import load_file

    from bdprune.archs import build_model

    state = load_file(str(path))
    model, _ = build_model(spec.arch, state, arch_args=spec.arch_args)
    model.load_state_dict(state)
    return model.eval()


def relearn(spec: zoo.Spec, data: dict, variant: str) -> list[float]:
    """ASR after the retuning attack on the repaired model (cached beside the removal row)."""
    import torch.nn.functional as F

    from bdprune.triggers import parse_trigger

    cached = removal_many.CACHE / f"{spec.name}__{variant}__relearn.json"
    if cached.exists():
        return json.loads(cached.read_text())
    model = _load(removal_many.CACHE / "pruned" / f"{spec.name}__{variant}.safetensors", spec)
    x, y = data["clean_x"], data["clean_y"]
    mode, trigger, _, target, _ = spec.poisons[0]
    classes = zoo.KINDS[spec.kind][4]
    pick = (y != target).nonzero().flatten()[:RELEARN_POISONED]
    px = parse_trigger(trigger).apply(x[pick])
    py = (y[pick] + 1) % classes if mode == "all-to-all" else torch.full_like(y[pick], target)
    x, y = torch.cat([x, px]), torch.cat([y, py])
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(RELEARN_EPOCHS):
        for idx in torch.randperm(len(y), generator=g).split(128):
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    asr = zoo.attack_success(model, spec, data)
    cached.write_text(json.dumps(asr))
    return asr


def selected(args) -> list[zoo.Spec]:
    """The zoo's 10-class models of the chosen kinds, architectures and part whose backdoor took (and the clean ones)."""
    out = []
    for spec in zoo.specs():
        if spec.kind not in (args.kind or ("digits8", "mnist28", "cmnist32")) or spec.part != args.part:
            continue
        if (args.arch and spec.arch not in args.arch) or not zoo.meta_path(spec).exists():
            continue
        if args.name and not any(part in spec.name for part in args.name):
            continue
        if zoo.took(json.loads(zoo.meta_path(spec).read_text())):
            out.append(spec)
    return out


def _med(values) -> str:
    values = list(values)
    return f"{statistics.median(values):.1f}" if values else "-"


def report(rows: list[dict]) -> str:
    """The summary per variant, then per variant and family, then one line per model."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| variant | removed (backdoored) | median ASR after | median ASR after re-learning | ACC drop, backdoored: median | "
             "ACC drop, clean: median / worst | cost, forward passes: median | residual check agrees with ASR |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in variants:
        group = [r for r in rows if r["variant"] == variant]
        bad = [r for r in group if r["family"] != "clean"]
        clean = [r["acc_before"] - r["acc_after"] for r in group if r["family"] == "clean"]
        ok = [r for r in bad if _removed(r)]
        if not group:
            continue
        worst = f"{max(clean):.1f}" if clean else "-"
        lines.append(f"| {variant} | {len(ok)} of {len(bad)} | {_med(max(r['asr_after']) for r in bad)} | "
                     f"{_med(max(r['relearn']) for r in bad)} | {_med(r['acc_before'] - r['acc_after'] for r in bad)} | "
                     f"{_med(clean)} / {worst} | {_med(r['forward_equivalents'] for r in group)} | "
                     f"{sum(_residual_agrees(r) for r in bad)} of {len(bad)} |")
    families = sorted({r["family"] for r in rows if r["family"] != "clean"})
    lines += ["", "Removed per family (ASR <= 5%, ACC drop <= 2):", "",
              "| variant | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for variant in variants:
        cells = []
        for family in families:
            group = [r for r in rows if r["variant"] == variant and r["family"] == family]
            cells.append(f"{sum(map(_removed, group))}/{len(group)}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "| model | variant | ACC before -> after | ASR before -> after -> re-learned | seconds |", "|---|---|---:|---:|---:|"]
    for r in rows:
        asr = " / ".join(f"{a:.1f} -> {b:.1f} -> {c:.1f}" for a, b, c in zip(r["asr_before"], r["asr_after"], r["relearn"])) or "-"
        lines.append(f"| {r['model']} | {r['variant']} | {r['acc_before']:.1f} -> {r['acc_after']:.1f} | {asr} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _residual_agrees(row: dict) -> bool:
    """Whether the residual check's "a trigger can still be synthesized" matches ASR after > 5%."""
    return (row["residual"] == "yes") == (max(row["asr_after"]) > 5.0)


def _removed(row: dict) -> bool:
    return max(row["asr_after"]) <= 5.0 and row["acc_before"] - row["acc_after"] <= 2.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", action="append", choices=("digits8", "mnist28", "cmnist32"))
    p.add_argument("--arch", action="append")
    p.add_argument("--name", action="append", help="only models whose name contains this")
    p.add_argument("--part", default="eval", choices=zoo.PARTS)
    p.add_argument("--variant", action="append", choices=tuple(removal_many.VARIANTS),
                   help="run only these (cached rows of the published ones are shown)")
    p.add_argument("--shard", default="0/1", help="I/N: measure only every N-th model from the I-th (run N processes side by side)")
    p.add_argument("--cached-only", action="store_true", help="measure nothing: the report from the cached rows")
    p.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    removal_many.CACHE.mkdir(parents=True, exist_ok=True)
    rows, data = [], {}
    shard, shards = (int(v) for v in args.shard.split("/"))
    for i, spec in enumerate(selected(args)):
        cached_only = args.cached_only or i % shards != shard
        if spec.kind not in data:
            data[spec.kind] = zoo.load_kind(spec.kind)
        unit = forward_seconds(spec, data[spec.kind])
        for variant in dict.fromkeys([*VARIANTS, *(args.variant or ())]):
            cached = (removal_many.CACHE / f"{spec.name}__{variant}.json").exists()
            if (args.variant and variant not in args.variant or cached_only) and not cached:
                continue
            row = removal_many.measure(spec, data[spec.kind], variant)
            row["relearn"] = relearn(spec, data[spec.kind], variant) if spec.family != "clean" else []
            row["forward_equivalents"] = row["seconds"] / unit
            print(f"{row['model']} ({variant}): ACC {row['acc_before']:.1f} -> {row['acc_after']:.1f}, ASR {row['asr_before']} -> "
                  f"{[round(a, 1) for a in row['asr_after']]} -> relearned {[round(a, 1) for a in row['relearn']]}, "
                  f"{row['seconds']:.0f} s", flush=True)
            rows.append(row)
    text = report(rows)
    print(text)
    if args.write:
        intro = " ".join(__doc__.split("\n\n")[0].split())
        name, title = ("purification", "") if args.part == "eval" else (f"purification-{args.part}", f", part `{args.part}`")
        write_section(name, f"## Published purifications beside unlearn{title} (issue 23)\n\n{provenance()}\n{intro}\n\n{text}")


if __name__ == "__main__":
    main()
