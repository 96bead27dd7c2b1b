"""bdprune benchmarks, one entry point (not part of the test suite).

    python benchmarks/run.py zoo               # train the zoo (cached), scan/prune/eval, write RESULTS.md
    python benchmarks/run.py zoo --train-only  # only train what is missing
    python benchmarks/run.py zoo --epochs 8    # the same zoo trained longer (own cache and section)
    python benchmarks/run.py speed             # speed and memory against a bare forward pass
    python benchmarks/run.py speed --quick     # smoke run
    python benchmarks/run.py speed --device cuda
    python benchmarks/run.py all               # both
    python benchmarks/run.py bnp-plus-tune     # bnp+ candidates on the zoo's tune part (prints)
    python benchmarks/run.py removal           # removal variants (anp, rnp, repairs) on the 8-epoch zoo's holdout part
    python benchmarks/run.py fleet             # 100 checkpoints: sequential vs --jobs 2 vs --ray; per-checkpoint overhead

Each subcommand rewrites its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    z = sub.add_parser("zoo", help="efficacy on real backdoored models")
    z.add_argument("--train-only", action="store_true", help="train missing models, measure nothing")
    z.add_argument("--part", choices=("tune", "holdout"), help="only this part (prints, does not write RESULTS.md)")
    z.add_argument("--arch", action="append", help="only this architecture (repeatable; prints only)")
    z.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    z.add_argument("--epochs", type=int, default=None, help="training epochs (default: zoo.EPOCHS, 2; another length gets its own cache and RESULTS.md section)")
    z.add_argument("--reuse-measurements", action="store_true",
                   help="reuse cached per-model measurements (cache/measure/) instead of re-measuring")
    t = sub.add_parser("bnp-plus-tune", help="choose bnp+'s ranking, fill and budget on the zoo's tune part (prints)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    t.add_argument("--shard", type=int, choices=(0, 1), default=None, help="every other tune model (run 0 and 1 side by side)")
    r = sub.add_parser("removal", help="backdoor removal variants side by side (issue 13)")
    r.add_argument("--part", choices=("tune", "holdout"), default="holdout")
    r.add_argument("--variants", default=None, help="comma-separated subset of removal.VARIANTS (prints only)")
    r.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    r.add_argument("--timing", action="store_true", help="only the learned-mask cost on a CIFAR ResNet-18 (prints)")
    r.add_argument("--cached-only", action="store_true", help="report the cached measurements, measure nothing new")
    r.add_argument("--arch", action="append", help="only this architecture (repeatable; prints only)")
    f = sub.add_parser("fleet", help="many checkpoints: sequential vs --jobs 2 vs --ray, and one scan process vs a bare pass (issue 16)")
    f.add_argument("--checkpoints", type=int, default=100, help="fleet size (default 100)")
    f.add_argument("--pairs", type=int, default=5, help="rounds of bare / bnp / ep processes (default 5)")
    f.add_argument("--parts", default=None, help="fleet,overhead (default both)")
    f.add_argument("--no-ray", action="store_true", help="leave out the Ray run")
    f.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the one-checkpoint processes (default: torch's)")
    f.add_argument("--probe", action="store_true", help="also one bnp process with the class probe (~30x a forward pass: minutes)")
    f.add_argument("--no-write", action="store_true", help="print only, do not rewrite RESULTS.md")
    s = sub.add_parser("speed", help="speed and memory against the forward-pass limit")
    a = sub.add_parser("all", help="zoo then speed")
    for p in (s, a):
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
        p.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repeat")
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        p.add_argument("--sizes", default=None, help="comma-separated sample counts (default 500,5000)")
        p.add_argument("--archs", default=None, help="comma-separated (default resnet18,resnet50)")
        p.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (default 3)")
        p.add_argument("--memory-sizes", default=None, help="sample counts for the memory runs (default: --sizes)")
        p.add_argument("--memory-passes", default=None, help="passes for the memory runs (default bare,bnp,ep)")
        p.add_argument("--memory-archs", default=None, help="architectures for the memory runs (default: --archs)")
        p.add_argument("--parts", default=None, help="comma-separated subset of help,clp,entropy,forward,memory to rerun (the rest keep the cached numbers)")
    a.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    a.add_argument("--part", default=None, help=argparse.SUPPRESS)
    a.add_argument("--arch", default=None, help=argparse.SUPPRESS)
    a.add_argument("--reuse-measurements", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cmd in ("zoo", "all"):
        import zoo

        if args.cmd == "all":
            args.threads = args.threads or 1
        zoo.run(args)
    if args.cmd == "bnp-plus-tune":
        import bnp_plus_tuning

        bnp_plus_tuning.run(args)
    if args.cmd == "removal":
        import removal

        removal.run(args)
    if args.cmd == "fleet":
        import fleet

        fleet.run(args)
    if args.cmd in ("speed", "all"):
        import speed

        speed.run(args)


if __name__ == "__main__":
    main()
