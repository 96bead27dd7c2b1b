"""Fleet audit (issue 16): many checkpoints sequentially, with ``--jobs 2`` and with ``--ray``,
side by side in one run; and the per-checkpoint cost of a whole ``bdprune scan`` process against
a bare script that loads the same model and data and runs the same forward pass.

Every bdprune run is a subprocess of the command line a user would type; the fleet's checkpoints
and data are generated once into benchmarks/cache/fleet/ (random weights, BN statistics from
forward passes of random images).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import HERE, provenance, write_section

ROOT = HERE.parent
CACHE = HERE / "cache" / "fleet"
FLEET_ARGS = ["--arch", "smallcnn", "--arch-arg", "width=8", "--samples", "64"]
FLEET_SHAPE = (1, 8, 8)

BARE = '''"""The bare pass: load the same model and data, one forward pass at the same batch size."""
import sys
import numpy as np
import torch
from safetensors.torch import load_file
from bdprune.archs.cifar_resnet import resnet18

model = resnet18()
model.load_state_dict(load_file(sys.argv[1]))
model.eval()
images = torch.from_numpy(np.load(sys.argv[2])["images"])
with torch.inference_mode():
    for start in range(0, len(images), 128):
        model(images[start:start + 128])
'''


def _env(threads: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _bn_state(model, shape, seed: int) -> dict:
    """``model``'s state with BN running statistics from forward passes of random images."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.train()
        for _ in range(3):
            model(torch.rand((64, *shape), generator=g))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def make_fleet(n: int) -> tuple[Path, Path]:
    """``n`` smallcnn (width 8, 1x8x8: the test suite's tiny model) checkpoints and 64 images, cached."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from bdprune.archs.smallcnn import smallcnn

    models = CACHE / f"smallcnn8_{n}"
    data = CACHE / "tiny.npz"
    if not data.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        np.savez(data, images=rng.random((64, *FLEET_SHAPE), dtype=np.float32), labels=np.arange(64) % 10)
    if not models.is_dir() or len(list(models.glob("*.safetensors"))) != n:
        models.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            torch.manual_seed(i)
            save_file(_bn_state(smallcnn(width=8), FLEET_SHAPE, i), str(models / f"m{i:04d}.safetensors"))
    return models, data


def make_resnet() -> tuple[Path, Path, Path]:
    """A CIFAR ResNet-18 (width 64) checkpoint, 1,000 random 3x32x32 images and the bare script."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from bdprune.archs.cifar_resnet import resnet18

    CACHE.mkdir(parents=True, exist_ok=True)
    ckpt, data, bare = CACHE / "resnet18.safetensors", CACHE / "cifar_like.npz", CACHE / "bare.py"
    if not ckpt.exists():
        torch.manual_seed(0)
        save_file(_bn_state(resnet18(), (3, 32, 32), 0), str(ckpt))
    if not data.exists():
        rng = np.random.default_rng(0)
        np.savez(data, images=rng.random((1000, 3, 32, 32), dtype=np.float32), labels=np.arange(1000) % 10)
    bare.write_text(BARE)
    return ckpt, data, bare


def _load_average() -> float:
    return os.getloadavg()[0]


def fleet_walls(models: Path, data: Path, n: int, ray: bool) -> tuple[list[tuple[str, float, str]], float]:
    """Wall time of each backend's whole process (one torch thread per process or worker), and the
    load average before the first."""
    load = _load_average()
    runs = [("sequential (default)", []), ("--jobs 2", ["--jobs", "2"])] + ([("--ray (local, 2 CPUs)", ["--ray"])] if ray else [])
    out, reference = [], None
    for name, extra in runs:
        report = CACHE / f"fleet_{len(out)}.jsonl"
        report.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bdprune", "scan", str(models), *FLEET_ARGS, "--data", str(data), "-f", "jsonl", "-o", str(report), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(1), cwd=CACHE)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in report.read_text().splitlines()]
        scores = {r["checkpoint"]: [layer["scores"] for layer in r["layers"]] for r in rows if "error" not in r}
        check = "ok" if proc.returncode in (0, 1) and len(scores) == n else f"exit {proc.returncode}, {len(scores)} rows"
        if reference is None:
            reference = scores
        elif scores != reference:
            check += "; scores differ from the sequential run"
        out.append((name, wall, check))
        print(f"{name}: {wall:.1f} s ({check})", file=sys.stderr)
    return out, load


def split(models: Path, data: Path, k: int = 10) -> dict[str, float]:
    """Median seconds per checkpoint of loading, the statistics pass with scores, and the verdict
    (its class probe), in this process with one torch thread, over ``k`` checkpoints."""
    import torch

    from bdprune.options import ScanSettings
    from bdprune.scan import load_model, load_samples, score_model
    from bdprune.verdict import assess

    torch.set_num_threads(1)
    images = load_samples(data, 64, 0)
    times: dict[str, list[float]] = {"load": [], "statistics pass + scores": [], "verdict (class probe)": []}
    for path in sorted(models.iterdir())[:k]:
        t0 = time.perf_counter()
        loaded = load_model(path, "smallcnn", arch_args={"width": "8"})
        t1 = time.perf_counter()
        result = score_model(loaded, images, ScanSettings(method="bnp").resolve(has_data=True), show_progress=False)
        t2 = time.perf_counter()
        assess(result, model=loaded.model, images=images)
        t3 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[key].append(value)
    return {key: statistics.median(v) for key, v in times.items()}


def startup() -> float:
    """Median wall seconds of ``python -m bdprune scan --help`` (interpreter and imports)."""
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bdprune", "scan", "--help"], capture_output=True, env=_env(1), check=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


TIME_FIELDS = {"wall": "Elapsed (wall clock) time", "user": "User time (seconds)", "sys": "System time (seconds)",
               "rss_mib": "Maximum resident set size (kbytes)", "minor_faults": "Minor (reclaiming a frame) page faults"}


def timed(cmd: list[str], env: dict) -> dict[str, float]:
    """``/usr/bin/time -v CMD``: wall, user, sys seconds, max RSS (MiB) and minor page faults."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=CACHE)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
    values = {}
    for key, label in TIME_FIELDS.items():
        text = re.search(rf"{re.escape(label)}.*?: (\S+)", proc.stderr).group(1)
        if key == "wall":
            parts = [float(p) for p in text.split(":")]
            values[key] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        else:
            values[key] = float(text) / (1024 if key == "rss_mib" else 1)
    return values


# A whole `bdprune scan` process, four ways: through the console entry point (main(), which sets
# glibc's allocator to keep freed memory) or straight through the Typer app (before that change),
# each with or without the bnp verdict's class probe (replaced by "not run" for the measurement).
_ENTRY = ("import sys\n{patch}from bdprune.cli import {entry}\nsys.exit({entry}())")
_NO_PROBE = "import bdprune.verdict as v\nv.synthesize = lambda *a, **k: None\n"


def _bdprune(entry: str, probe: bool) -> list[str]:
    return [sys.executable, "-c", _ENTRY.format(patch="" if probe else _NO_PROBE, entry=entry)]


def overhead(pairs: int, probe: bool, threads: int | None = None) -> tuple[dict[str, list[dict]], float]:
    """``pairs`` rounds of the bare script and the bdprune processes (default torch threads),
    alternated; with ``probe`` the bnp process with its class probe (~30x a forward pass) once."""
    ckpt, data, bare = make_resnet()
    env = _env(threads)
    common = ["scan", str(ckpt), "--arch", "resnet18", "--data", str(data), "--samples", "1000", "--batch-size", "128", "-f", "json"]
    cmds = {"bare script": [sys.executable, str(bare), str(ckpt), str(data)],
            "ep": [*_bdprune("main", True), *common, "--method", "ep"],
            "ep, allocator default (before)": [*_bdprune("app", True), *common, "--method", "ep"],
            "bnp without the class probe": [*_bdprune("main", False), *common, "--method", "bnp"],
            "bnp without the class probe, allocator default (before)": [*_bdprune("app", False), *common, "--method", "bnp"]}
    load = _load_average()
    timed(cmds["bare script"], env)  # warm the file cache (the same checkpoint and data)
    runs: dict[str, list[dict]] = {name: [] for name in cmds}
    for i in range(pairs):
        for name, cmd in cmds.items():
            runs[name].append(timed(cmd, env))
            print(f"round {i + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    if probe:
        runs["bnp with the class probe (as shipped; one run, against round 1's bare)"] = [timed([*_bdprune("main", True), *common, "--method", "bnp"], env)]
    return runs, load


def _ratio_row(name: str, runs: dict[str, list[dict]]) -> str:
    ratios = [r["wall"] / b["wall"] for r, b in zip(runs[name], runs["bare script"])]
    med = {k: statistics.median(r[k] for r in runs[name]) for k in TIME_FIELDS}
    verdict = "met" if statistics.median(ratios) <= 1.10 else "**missed**"
    ratio = f"{statistics.median(ratios):.2f}x ({verdict}) | {min(ratios):.2f}-{max(ratios):.2f}x" if name != "bare script" else "1 | -"
    return (f"| {name} | {med['wall']:.2f} | {med['user']:.2f} | {med['sys']:.2f} | {med['rss_mib']:.0f} | "
            f"{med['minor_faults']:.0f} | {ratio} |")


def run(args) -> None:
    """Measure what ``args`` asks for, print it, and write the ``fleet`` section of RESULTS.md."""
    parts = set((args.parts or "fleet,overhead").split(","))
    body = ["## Fleet audit (issue 16)", "", provenance("cpu"), ""]
    if "fleet" in parts:
        models, data = make_fleet(args.checkpoints)
        walls, load = fleet_walls(models, data, args.checkpoints, ray=not args.no_ray)
        per = split(models, data)
        start = startup()
        body += _fleet_text(walls, load, per, start, args.checkpoints)
    if "overhead" in parts:
        runs, load = overhead(args.pairs, args.probe, args.threads)
        (CACHE / "overhead_runs.json").write_text(json.dumps({"load": load, "runs": runs}, indent=1))
        body += ["### One checkpoint: a whole `bdprune scan` process vs a bare forward pass (target <= 1.10x)", "",
                 f"CIFAR ResNet-18 (width 64, random weights), 1,000 random 32x32 images, batch 128, "
                 f"{'OMP_NUM_THREADS=' + str(args.threads) if args.threads else 'torch default'} threads; each run is `/usr/bin/time -v` of a fresh process, the processes alternated, {args.pairs} rounds "
                 f"after one bare run to warm the file cache; medians, ratio = median of the per-round ratios of wall time to the same "
                 f"round's bare script, range = lowest-highest round. Load average before: {load:.2f}.", "",
                 "| process | wall s | user s | sys s | max RSS MiB | minor faults | wall ratio | range |",
                 "|---|---|---|---|---|---|---|---|"]
        body += [_ratio_row(name, runs) for name in runs]
        body += [""]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("fleet", text)


def _fleet_text(walls, load: float, per: dict[str, float], start: float, n: int) -> list[str]:
    seq = walls[0][1]
    work = sum(per.values())
    lines = [f"### {n} checkpoints, three ways, one run (smallcnn width 8 on 1x8x8, 64 samples, bnp with its verdict)", "",
             f"Each is one `bdprune scan DIR ... -f jsonl -o FILE` process with OMP_NUM_THREADS=1 (one torch thread "
             f"per process or worker, so the two workers do not fight over the 2 cores). Load average before: {load:.2f}.", "",
             "| backend | wall s | per checkpoint s | speed-up vs sequential | rows |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {wall:.1f} | {wall / n:.3f} | {seq / wall:.2f}x | {check} |" for name, wall, check in walls]
    lines += ["", "Per checkpoint, in one process, one thread (median of 10): " +
              ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in per.items()) +
              f"; process start-up (`bdprune scan --help`) {start:.2f} s.", ""]
    for name, wall, _ in walls[1:]:
        overhead = (wall - start - n * work / 2) / n
        lines.append(f"- {name}: {wall:.1f} s = start-up + {n} x {work * 1000:.0f} ms of work over 2 cores + "
                     f"{overhead * 1000:.0f} ms per checkpoint of everything else (worker start-up, scheduling, transfers).")
    return lines + [""]
