"""Speed and memory of bdprune's scoring against the limits that matter, measured side by side.

* BNP and EP: the statistics pass plus the scores and thresholds, against a bare forward pass
  over the same batches on the same device (inference mode), as a ratio. Targets: <= 1.10x.
* CLP: bdprune's batched Gram-matrix ``eigvalsh`` (and the previous batched ``svdvals``) against a per-channel SVD loop written here
  (the official code's approach), as a ratio. Target: >= 20x faster.
* EP's entropy: ``bdprune.methods.ep.histogram_entropy`` against a per-bin Python loop (the
  official approach) on the same standardized matrix; the two must agree.
* Peak memory of the statistics pass at each sample count, in a fresh subprocess: on CPU the
  resident set sampled every millisecond during the pass minus the RSS just before it (torch's
  CPU allocations are invisible to tracemalloc, and ru_maxrss is already set higher by start-up),
  on CUDA ``torch.cuda.max_memory_allocated`` growth. Target: BNP flat in the sample count.
* ``bdprune --help``: whole-process wall time, median of 5 subprocess runs.

Models are the paper's CIFAR ``resnet18``/``resnet50`` with random weights whose BN running
statistics were warmed by a few training-mode forward passes; images are uniform random
3x32x32. Each timing is the median of ``--repeats`` runs after one warm-up, the three passes
interleaved so machine load affects them alike.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BATCH = 128


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(arch: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """``arch`` with random weights and BN statistics warmed by training-mode passes."""
    from bdprune.archs import build_model

    torch.manual_seed(seed)
    model, _ = build_model(arch, None)
    model.to(device).train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(16, 3, 32, 32, device=device))
    return model.eval()


def make_images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def bare_forward(model, images, device) -> None:
    """The floor: the same batches through the model, nothing else."""
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            model(images[start : start + BATCH].to(device, non_blocking=True))
    sync(device)


def method_pass(model, images, device, method: str) -> None:
    """What ``score_model`` does for a data-driven method: statistics pass, scores, thresholds."""
    from bdprune.methods import METHODS, ScoreContext
    from bdprune.scoring import flag_layer
    from bdprune.stats import collect_stats

    cls = METHODS.get(method)
    stats = collect_stats(
        model, images, device=device, batch_size=BATCH, moments=cls.needs_moments, maxima=cls.needs_maxima, show_progress=False
    )
    with torch.inference_mode():
        raw = cls().score(ScoreContext(model=model, stats=stats, device=device))
    for name, s in raw.items():
        flag_layer(name, s, 3.0, low_is_suspicious=cls.low_is_suspicious)
    sync(device)


def legacy_moment_sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics hook before this benchmark: a float64 copy of the whole BN input, then
    sum(x) and sum(x * x) (a second full float64 temporary)."""
    dims = (0,) + tuple(range(2, x.dim()))
    xd = x.to(torch.float64)
    return xd.sum(dims), (xd * xd).sum(dims)


def legacy_bnp_pass(model, images, device) -> None:
    """``method_pass(..., "bnp")`` with the previous hook swapped in (for the before/after)."""
    import bdprune.stats as st

    current = st.moment_sums
    st.moment_sums = legacy_moment_sums
    try:
        method_pass(model, images, device, "bnp")
    finally:
        st.moment_sums = current


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def forward_ratios(arch: str, n: int, device: torch.device, repeats: int, legacy: bool = True) -> dict:
    """Bare forward vs BNP's and EP's statistics pass (and, if ``legacy``, the previous BNP hook)."""
    model = make_model(arch, device)

    def passes(images: torch.Tensor) -> dict:
        runs = {"bare": lambda: bare_forward(model, images, device)}
        for m in ("bnp", "ep"):
            runs[m] = lambda m=m: method_pass(model, images, device, m)
        if legacy:
            runs["bnp_legacy"] = lambda: legacy_bnp_pass(model, images, device)
        return runs

    images = make_images(n)
    for warm_up in passes(images[: min(n, 2 * BATCH)]).values():
        warm_up()
    runs = passes(images)
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"arch": arch, "n": n, **{f"{k}_s": v for k, v in med.items()}, "bnp_ratio": med["bnp"] / med["bare"], "ep_ratio": med["ep"] / med["bare"],
            "bnp_legacy_ratio": med["bnp_legacy"] / med["bare"] if legacy else None, "all": times}


# ---------------------------------------------------------------- CLP

def clp_loop_reference(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The official code's approach: pair each BN with the last conv before it in module order,
    then one SVD per output channel in a Python loop."""
    out, conv = {}, None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            conv = m
        elif isinstance(m, torch.nn.BatchNorm2d) and conv is not None:
            std = m.running_var.sqrt()
            weight = conv.weight
            scores = []
            for idx in range(weight.shape[0]):
                w = weight[idx].reshape(weight.shape[1], -1) * (m.weight[idx] / std[idx]).abs()
                scores.append(torch.svd(w.cpu())[1].max())
            out[name] = torch.stack(scores)
    return out


def clp_score_math(model: torch.nn.Module, pairs: dict[str, str], device) -> dict[str, torch.Tensor]:
    from bdprune.methods.clp import channel_lipschitz

    mods = dict(model.named_modules())
    return {bn: channel_lipschitz(mods[conv].weight, mods[bn].weight, mods[bn].running_var) for bn, conv in pairs.items()}


def clp_svdvals_previous(model: torch.nn.Module, pairs: dict[str, str], device) -> dict[str, torch.Tensor]:
    """bdprune's previous CLP (before 0.2): one batched ``svdvals`` over every channel's
    (C_in x k*k) float64 matrix, kept here for the before/after."""
    mods = dict(model.named_modules())
    out = {}
    for bn, conv in pairs.items():
        w = mods[conv].weight.detach().to(torch.float64)
        m = w.unsqueeze(1) if w.dim() == 2 else w.reshape(w.shape[0], w.shape[1], -1)
        b = mods[bn]
        out[bn] = torch.linalg.svdvals(m)[:, 0] * (b.weight.detach().to(torch.float64) / b.running_var.to(torch.float64).sqrt()).abs()
    return out


def clp_bench(arch: str, device: torch.device, repeats: int) -> dict:
    from bdprune.methods import METHODS, ScoreContext
    from bdprune.pairing import pair_conv_bn

    model = make_model(arch, device)
    pairs = pair_conv_bn(model).pairs
    with torch.inference_mode():
        whole = lambda: (METHODS.get("clp")().score(ScoreContext(model=model, stats=None, device=device)), sync(device))  # noqa: E731
        math_only = lambda: (clp_score_math(model, pairs, device), sync(device))  # noqa: E731
        previous = lambda: (clp_svdvals_previous(model, pairs, device), sync(device))  # noqa: E731
        loop = lambda: clp_loop_reference(model)  # noqa: E731
        ours, ref, before = whole()[0], loop(), previous()[0]
        diff = max(float((ours[k].cpu() - ref[k].double()).abs().max() / ref[k].double().abs().max()) for k in ours)
        previous_diff = max(float((ours[k] - before[k]).abs().max() / ours[k].abs().max()) for k in ours)
        times = {"loop": [], "whole": [], "math": [], "previous": []}
        for _ in range(repeats):
            times["loop"].append(timed(loop))
            times["whole"].append(timed(whole))
            times["math"].append(timed(math_only))
            times["previous"].append(timed(previous))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "arch": arch, "channels": sum(len(v) for v in ours.values()), "loop_s": med["loop"], "whole_s": med["whole"],
        "math_s": med["math"], "speedup_whole": med["loop"] / med["whole"], "speedup_math": med["loop"] / med["math"],
        "max_rel_diff": diff, "previous_s": med["previous"], "speedup_previous": med["loop"] / med["previous"],
        "previous_rel_diff": previous_diff,
    }


# ---------------------------------------------------------------- EP entropy

def entropy_loop_reference(values: torch.Tensor, step: float = 0.01) -> torch.Tensor:
    """The official approach: a Python loop over the layer's bins, open intervals."""
    from bdprune.methods.ep import bin_edges

    values = values.to(torch.float64)
    edges = bin_edges(float(values.min()), float(values.max()), step, device=values.device)
    n = values.shape[1]
    entropy = torch.zeros(values.shape[0], dtype=torch.float64, device=values.device)
    for k in range(len(edges) - 1):
        p = ((values > edges[k]) & (values < edges[k + 1])).sum(dim=1).to(torch.float64) / n
        entropy -= torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    return entropy


def entropy_bench(arch: str, n: int, device: torch.device, repeats: int) -> dict:
    from bdprune.methods.ep import histogram_entropy, standardize
    from bdprune.stats import collect_stats

    model = make_model(arch, device)
    stats = collect_stats(model, make_images(n), device=device, batch_size=BATCH, moments=False, maxima=True, show_progress=False)
    mats = [standardize(st.maxima_matrix().to(device)) for st in stats.values()]
    ours = lambda: ([histogram_entropy(m) for m in mats], sync(device))[0]  # noqa: E731
    ref = lambda: ([entropy_loop_reference(m) for m in mats], sync(device))[0]  # noqa: E731
    a, b = ours(), ref()
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    t_ours = statistics.median(timed(ours) for _ in range(repeats))
    t_ref = statistics.median(timed(ref) for _ in range(repeats))
    bins = sum(int((float(m.max()) - float(m.min())) / 0.01) for m in mats)
    return {"arch": arch, "n": n, "layers": len(mats), "bins": bins, "ours_s": t_ours, "loop_s": t_ref, "speedup": t_ref / t_ours, "max_abs_diff": diff}


# ---------------------------------------------------------------- memory (fresh subprocess)

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(arch: str, n: int, what: str, device_name: str) -> dict:
    """Run in a fresh process: how far one pass of ``what`` raises memory above where it started.

    CPU: a thread samples the process's resident set (/proc/self/statm) every millisecond during
    the pass; the result is the highest sample minus the RSS just before the pass (getrusage's
    ru_maxrss is not used: start-up already set a higher high-water mark than one pass reaches).
    CUDA: torch.cuda.max_memory_allocated growth over the pass.
    """
    import gc
    import threading

    device = torch.device(device_name)
    model = make_model(arch, device)
    images = make_images(n)
    gc.collect()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _rss_bytes()
        peak[0] = before
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    try:
        if what == "bare":
            bare_forward(model, images, device)
        else:
            method_pass(model, images, device, what)
    finally:
        stop.set()
    if device.type == "cuda":
        delta = torch.cuda.max_memory_allocated(device) - before
        how = "torch.cuda.max_memory_allocated growth over the pass"
    else:
        sampler.join()
        delta = max(peak[0], _rss_bytes()) - before
        how = "peak RSS sampled every 1 ms during the pass minus RSS before it"
    return {"arch": arch, "n": n, "what": what, "delta_mb": delta / 2**20, "how": how}


def memory_bench(arch: str, n: int, what: str, device: str, threads: int | None) -> dict:
    code = (
        "import sys, json, torch; sys.path.insert(0, %r); import speed; "
        "%s print(json.dumps(speed.memory_child(%r, %d, %r, %r)))"
        % (str(HERE), f"torch.set_num_threads({threads});" if threads else "", arch, n, what, device)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- CLI start-up

def help_wall_time(runs: int = 5) -> dict:
    exe = shutil.which("bdprune")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "bdprune", "--help"]
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
    times = [timed(lambda: subprocess.run(cmd, capture_output=True, check=True)) for _ in range(runs)]
    return {"cmd": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), "median_s": statistics.median(times), "all": times}


# ---------------------------------------------------------------- driver

def run(args) -> None:
    from _report import provenance, write_section

    if args.threads:
        torch.set_num_threads(args.threads)
    from bdprune.options import resolve_device

    device = resolve_device(args.device)
    archs = (args.archs or ("resnet18" if args.quick else "resnet18,resnet50")).split(",")
    sizes = [int(s) for s in (args.sizes or ("64,256" if args.quick else "500,5000")).split(",")]
    repeats = 1 if args.quick else args.repeats
    mem_sizes = [int(s) for s in args.memory_sizes.split(",")] if args.memory_sizes else sizes
    mem_archs = args.memory_archs.split(",") if args.memory_archs else archs
    mem_passes = (args.memory_passes or "bare,bnp,ep").split(",")
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    parts = set((args.parts or "help,clp,entropy,forward,memory").split(","))
    out = HERE / "cache" / f"speed_{device.type}.json"
    res = {"forward": [], "clp": [], "entropy": [], "memory": []}
    if parts != {"help", "clp", "entropy", "forward", "memory"} and out.exists():
        # A partial rerun replaces only its own tables; the others keep the earlier run's numbers.
        res = {**json.loads(out.read_text()), **{p: [] for p in parts if p != "help"}}
        earlier = [r for r in res.get("reruns", []) if not set(r["parts"]) & parts]  # a rerun supersedes those it replaces
        res["reruns"] = earlier + [{"parts": sorted(parts), "provenance": provenance(str(device)), "repeats": repeats}]
    else:
        res["provenance"], res["repeats"] = provenance(str(device)), repeats
    if "help" in parts:
        res["help"] = help_wall_time()
        log(f"bdprune --help: {res['help']['median_s']:.3f}s")
    for arch in archs:
        if "clp" in parts:
            res["clp"].append(clp_bench(arch, device, repeats))
            log(f"clp {res['clp'][-1]}")
        if "entropy" in parts:
            res["entropy"].append(entropy_bench(arch, sizes[0], device, repeats))
            log(f"entropy {res['entropy'][-1]}")
        for n in sizes if "forward" in parts else ():
            # the previous hook only at the smallest size: it is there for the before/after, and a
            # 5,000-image pass of it would add a quarter to the longest part of the run
            res["forward"].append(forward_ratios(arch, n, device, repeats, legacy=n == min(sizes)))
            r = res["forward"][-1]
            log(f"{arch} n={n}: bare {r['bare_s']:.2f}s BNP {r['bnp_ratio']:.3f}x EP {r['ep_ratio']:.3f}x")
        for n in mem_sizes if arch in mem_archs and "memory" in parts else ():
            for what in mem_passes:
                res["memory"].append(memory_bench(arch, n, what, args.device, args.threads))
                log(f"memory {res['memory'][-1]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    body = report(res, device)
    if args.quick:
        print(body)
    else:
        write_section(f"speed-{device.type}", body)
        log(f"wrote RESULTS.md (speed-{device.type} section)")


def _spread(row: dict, what: str) -> str:
    ratios = [t / bare for t, bare in zip(row["all"][what], row["all"]["bare"])]
    return f"{min(ratios):.3f}-{max(ratios):.3f}x"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def report(res: dict, device: torch.device) -> str:
    ok = lambda cond: "met" if cond else "**missed**"  # noqa: E731
    lines = [f"## Speed and memory ({device.type})\n", res["provenance"], f"Median of {res['repeats']} after a warm-up; batch {BATCH}.\n"]
    for rerun in res.get("reruns", []):
        lines.append(f"The tables {', '.join(rerun['parts'])} were rerun later, on their own (median of {rerun['repeats']}):\n\n{rerun['provenance']}")
    lines += ["### Statistics pass + scores vs a bare forward pass (target <= 1.10x)\n",
              "BNP (before) = the same pass with the previous hook (a float64 copy of each whole BN input and a second one for x*x), "
              "measured in the same run, at the smallest sample count only. Ratio = median pass / median bare pass; "
              "range = the lowest and highest ratio of one repeat's pass to the same repeat's bare pass (the machine's noise).\n",
              "| arch | samples | bare forward s | BNP s | BNP ratio | BNP range | BNP (before) ratio | EP s | EP ratio | EP range |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["forward"]:
        lines.append(f"| {r['arch']} | {r['n']} | {r['bare_s']:.3f} | {r['bnp_s']:.3f} | {r['bnp_ratio']:.3f}x ({ok(r['bnp_ratio'] <= 1.10)}) | "
                     f"{_spread(r, 'bnp')} | {_ratio(r['bnp_legacy_ratio'])} | {r['ep_s']:.3f} | {r['ep_ratio']:.3f}x ({ok(r['ep_ratio'] <= 1.10)}) | {_spread(r, 'ep')} |")
    lines += ["\n### CLP: batched Gram eigvalsh vs a per-channel SVD loop (target >= 20x)\n",
              "Loop = the official approach (module-order pairing, one float32 `torch.svd` per channel). bdprune = sqrt of the top "
              "eigenvalue of each channel's k*k x k*k Gram matrix, float64, one batched `eigvalsh` per layer (`channel_lipschitz`); "
              "score math only = that without the torch.fx pairing. Previous = bdprune 0.1's batched `svdvals`, for the before/after.\n",
              "| arch | channels | loop s | bdprune CLP (incl. torch.fx pairing) s | speed-up | score math only s | speed-up | max rel. diff vs loop | previous (batched svdvals) s | speed-up | rel. diff vs bdprune |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["clp"]:
        lines.append(f"| {r['arch']} | {r['channels']} | {r['loop_s']:.3f} | {r['whole_s']:.4f} | {r['speedup_whole']:.1f}x ({ok(r['speedup_whole'] >= 20)}) | "
                     f"{r['math_s']:.4f} | {r['speedup_math']:.1f}x | {r['max_rel_diff']:.1e} | {r['previous_s']:.4f} | {r['speedup_previous']:.1f}x | {r['previous_rel_diff']:.1e} |")
    lines += ["\n### EP entropy: vectorized vs per-bin Python loop (same standardized matrices, all layers)\n",
              "| arch | samples | layers | bins | loop s | bdprune s | speed-up | max abs. diff |", "|---|---|---|---|---|---|---|---|"]
    for r in res["entropy"]:
        lines.append(f"| {r['arch']} | {r['n']} | {r['layers']} | {r['bins']} | {r['loop_s']:.3f} | {r['ours_s']:.4f} | {r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |")
    how = res["memory"][0]["how"] if res["memory"] else ""
    lines += [f"\n### Peak memory of one pass, fresh subprocess each ({how})\n", "| arch | pass | " + " | ".join(f"{n} samples MiB" for n in sorted({m['n'] for m in res['memory']})) + " |"]
    ns = sorted({m["n"] for m in res["memory"]})
    lines.append("|---|---|" + "---|" * len(ns))
    for arch in dict.fromkeys(m["arch"] for m in res["memory"]):
        for what in ("bare", "bnp", "ep"):
            cells = [next((f"{m['delta_mb']:.1f}" for m in res["memory"] if m["arch"] == arch and m["n"] == n and m["what"] == what), "-") for n in ns]
            lines.append(f"| {arch} | {what} | " + " | ".join(cells) + " |")
    h = res["help"]
    lines.append(f"\n### CLI start-up\n\n`{h['cmd']}` whole-process wall time, median of 5: {h['median_s']:.3f} s ({ok(h['median_s'] < 1.0)}; runs: "
                 + ", ".join(f"{t:.3f}" for t in h["all"]) + ")\n")
    return "\n".join(lines)
