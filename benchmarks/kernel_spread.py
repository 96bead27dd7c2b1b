"""How much the verdict's statistic and ``--repair unlearn``'s effect move with the CPU's kernels
(issue 25): the same measurements in fresh processes under ATEN_CPU_CAPABILITY (torch's own
vectorized kernels) and MKL_CBWR (MKL's code path, which differs by CPU vendor) settings:

* the verdict on the tests' checked-in fixtures (tests/fixtures/; inference on fixed weights);
* the verdict on the same recipes trained from scratch in that process (training moves too);
* ``prune --u 1000 --repair unlearn`` on the BadNets fixture: ACC and ASR after, on held-out digits;
* the verdict on a few calibration models of the detection zoo (benchmarks/detection_zoo.py).

    python benchmarks/kernel_spread.py [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _report import HERE, provenance, write_section

ROOT = HERE.parent
SETTINGS = [
    {},
    {"ATEN_CPU_CAPABILITY": "default"},
    {"ATEN_CPU_CAPABILITY": "avx2"},
    {"ATEN_CPU_CAPABILITY": "avx512"},
    {"MKL_CBWR": "COMPATIBLE"},
    {"MKL_CBWR": "AVX2"},
    {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
]
ZOO = ["mnist28-smallcnn8-clean-adam", "mnist28-resnet188-badnets-r10-t8-s20100", "cmnist32-smallcnn8-clean-augmented",
       "cmnist32-resnet188-lowfreq-r05-t5-s20105", "digits8-resnet188-clean-plain2", "digits8-resnet188-badnets-r05-t8-s10100"]


def child() -> None:
    """One setting's measurements, printed as JSON (runs in a fresh process)."""
    import tempfile

    import numpy as np
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    sys.path.insert(0, str(HERE))
    import make_fixtures as mf

    from bdprune.api import prune_checkpoint, scan_checkpoints
    from bdprune.scan import load_model
    from bdprune.triggers import parse_trigger

    torch.set_num_threads(1)
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "fixtures": {}, "trained": {}, "zoo": {}}
    d = mf.digits_split()
    tmp = Path(tempfile.mkdtemp())
    np.savez(tmp / "clean.npz", images=d["clean_x"], labels=d["clean_y"])
    np.savez(tmp / "fit.npz", images=d["clean_x"][:200], labels=d["clean_y"][:200])
    stat = lambda path, data, arch="smallcnn", args=mf.ARCH_ARGS: scan_checkpoints(  # noqa: E731
        [path], arch, data=data, device="cpu", arch_args=args, show_progress=False).results[0].verdict.statistic
    for name in mf.MODELS:
        out["fixtures"][name] = stat(mf.path_of(name), tmp / "clean.npz")
        model = mf.train(name)
        path = tmp / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out["trained"][name] = stat(path, tmp / "clean.npz")
    trig, target = parse_trigger(mf.MODELS["digits_badnets"][0]), mf.MODELS["digits_badnets"][2]
    x, y = torch.from_numpy(d["test_x"]), torch.from_numpy(d["test_y"])

    def acc_asr(path: Path) -> tuple[float, float]:
        m = load_model(path, "smallcnn", arch_args=mf.ARCH_ARGS).model
        with torch.no_grad():
            keep = y != target
            return (100 * float((m(x).argmax(1) == y).float().mean()), 100 * float((m(trig.apply(x[keep])).argmax(1) == target).float().mean()))

    result = prune_checkpoint(mf.path_of("digits_badnets"), "smallcnn", data=tmp / "fit.npz", u=1000, repair="unlearn",
                              output=tmp / "u.safetensors", device="cpu", arch_args=mf.ARCH_ARGS, show_progress=False)
    out["unlearn"] = {"before": acc_asr(mf.path_of("digits_badnets")), "after": acc_asr(result.output)}
    import detection_zoo as dz

    specs = {s.name: s for s in dz.specs()}
    for name in ZOO:
        s = specs[name]
        if dz.model_path(s).exists():
            out["zoo"][name] = stat(dz.model_path(s), dz.clean_npz(s.kind), s.arch, s.arch_args)
    print("RESULT " + json.dumps(out))


def run_all() -> list[tuple[dict, dict]]:
    rows = []
    for env in SETTINGS:
        proc = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True,
                              env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:  # e.g. ATEN_CPU_CAPABILITY=avx512 on a CPU without it: torch dies of SIGILL
            rows.append((env, {"failed": f"exit {proc.returncode}" + (" (SIGILL: the CPU lacks these instructions)" if proc.returncode == -4 else "")}))
            print(env, rows[-1][1], file=sys.stderr, flush=True)
            continue
        line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
        rows.append((env, json.loads(line[len("RESULT "):])))
        print(env, rows[-1][1], file=sys.stderr, flush=True)
    return rows


def table(rows: list[tuple[dict, dict]]) -> str:
    from bdprune.verdict import TRIGGER_BAR

    failed = [(env, r) for env, r in rows if "failed" in r]
    rows = [(env, r) for env, r in rows if "failed" not in r]
    names = list(rows[0][1]["fixtures"])
    head = ["setting", "capability"] + [f"fixture {n[7:]}" for n in names] + [f"trained {n[7:]}" for n in names] + ["unlearn ACC / ASR after"]
    zoo = list(rows[0][1]["zoo"])
    head += [f"zoo {n}" for n in zoo]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for env, r in rows:
        label = ", ".join(f"{k}={v}" for k, v in env.items()) or "(none)"
        cells = [label, r["capability"]] + [f"{r['fixtures'][n]:.3f}" for n in names] + [f"{r['trained'][n]:.3f}" for n in names]
        cells.append("{:.1f} / {:.1f}".format(*r["unlearn"]["after"]))
        cells += [f"{r['zoo'][n]:.3f}" for n in zoo]
        lines.append("| " + " | ".join(cells) + " |")
    spread = lambda key, n: (min(r[key][n] for _, r in rows), max(r[key][n] for _, r in rows))  # noqa: E731
    notes = [f"- {key} {n}: {lo:.3f}-{hi:.3f}" for key in ("fixtures", "trained") for n in names for lo, hi in [spread(key, n)]]
    notes += [f"- zoo {n}: {lo:.3f}-{hi:.3f}" for n in zoo for lo, hi in [spread("zoo", n)]]
    after = [r["unlearn"]["after"] for _, r in rows]
    notes.append(f"- unlearn on the BadNets fixture, after: ACC {min(a for a, _ in after):.1f}-{max(a for a, _ in after):.1f}, "
                 f"ASR {min(b for _, b in after):.1f}-{max(b for _, b in after):.1f} (before: ACC {rows[0][1]['unlearn']['before'][0]:.1f}, "
                 f"ASR {rows[0][1]['unlearn']['before'][1]:.1f})")
    notes += [f"- {', '.join(f'{k}={v}' for k, v in env.items())}: not measured, the process failed ({r['failed']})" for env, r in failed]
    return "\n".join(lines + ["", f"Ranges over the settings (verdict statistic; suspicious above 1, i.e. a share above {TRIGGER_BAR:g}):", ""] + notes)


def main() -> None:
    if "--child" in sys.argv:
        child()
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    body = "\n".join(["## Kernel spread: the verdict and unlearn under other CPU kernels (issue 25)", "", provenance(), "",
                      "Each row one fresh process (one torch thread) under the environment shown; `capability` is what torch",
                      "reports it runs (a request above the CPU's is capped). Statistic = the verdict's share / its bar.", "",
                      table(run_all())])
    print(body)
    if args.write:
        write_section("kernel-spread", body)


if __name__ == "__main__":
    main()
