"""The built-in example: a BadNets-backdoored ``mnist_resnet`` and held-out digits, shipped in
this folder, so that ``bdprune demo`` shows the whole job (scan -> prune -> eval) at once.

:func:`run_demo` goes through the same functions as the ``scan``, ``prune`` and ``eval``
commands (:mod:`bdprune.api`) with the defaults of ``prune`` (BNP at u=3 on the clean samples)
followed by the repair the README recommends (``--repair unlearn``), and prints the same views.
How the files were made: ``README.md`` here and :mod:`bdprune.demo.train_demo`.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
ARCH = "mnist_resnet"
MODEL = DEMO_DIR / "model.safetensors"
CLEAN_TWIN = DEMO_DIR / "clean_twin.safetensors"  # the same recipe, nothing poisoned (5 epochs): the verdict's negative control
CLEAN = DEMO_DIR / "clean.npz"
TEST = DEMO_DIR / "test.npz"
TEST_TRIGGERED = DEMO_DIR / "test_triggered.npz"
DEFAULT_TARGET = 0
PRUNED_NAME = "model.pruned.safetensors"


@dataclass
class DemoResult:
    """The numbers of one demo run (percentages; drops are before - after)."""

    scan: object  # bdprune.scoring.ScanResult
    prune: object  # bdprune.pruning.PruneOutcome
    before: object  # bdprune.evaluate.EvalResult of the shipped model
    after: object  # ... of the pruned one
    output: Path | None  # the pruned file, None when it went to a temporary directory (removed)

    @property
    def channels_pruned(self) -> int:
        return sum(map(len, self.prune.channels.values()))

    @property
    def acc_drop(self) -> float:
        return self.before.acc - self.after.acc

    @property
    def asr_drop(self) -> float:
        return self.before.asr - self.after.asr


def demo_metadata(model: Path = MODEL) -> dict[str, str]:
    """The text metadata of the shipped model: how it was made (see README.md)."""
    from safetensors import safe_open

    with safe_open(str(model), framework="pt") as f:
        return dict(f.metadata() or {})


def demo_target(model: Path = MODEL) -> int:
    """The attack's target label, as recorded in the model's metadata."""
    return int(demo_metadata(model).get("target", DEFAULT_TARGET))


def run_demo(
    output_dir: str | Path | None = None,
    *,
    force: bool = False,
    top: int = 10,
    device: str = "auto",
    console=None,
    show_progress: bool = True,
    repair: str = "unlearn",
) -> DemoResult:
    """Scan, prune (then ``repair``: one of bdprune.repair.REPAIRS) and evaluate the shipped
    backdoored model; print each step on ``console``.

    The pruned file goes to ``output_dir/model.pruned.safetensors`` (refused if it exists unless
    ``force``), or to a temporary directory that is removed afterwards.
    """
    from ..api import evaluate_checkpoints, prune_checkpoint, scan_checkpoints
    from ..progress import stdout_console
    from ..report import REPORTERS
    from ..repair import RepairSettings
    from ..views import print_eval, print_prune

    settings = RepairSettings(repair).check()
    console = console or stdout_console()
    output_dir = _checked_output_dir(output_dir, force)
    target = _introduce(console)
    say = lambda text: console.print(text, style="bold", markup=False, highlight=False)  # noqa: E731
    say(f"Step 1/3: scan with {CLEAN.name} ({_count(CLEAN)} held-out clean digits)")
    [scan] = scan_checkpoints([MODEL], ARCH, data=CLEAN, device=device, show_progress=show_progress).results
    REPORTERS.get("table")().write([scan], console, top=top)  # what `bdprune scan` prints
    with ExitStack() as stack:
        out_dir = output_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bdprune-demo-")))
        say(f"Step 2/3: prune (the defaults of `bdprune prune`{'' if repair == 'none' else f', then --repair {repair}'})")
        outcome = prune_checkpoint(MODEL, ARCH, data=CLEAN, output=out_dir / PRUNED_NAME, force=force, device=device,
                                   show_progress=show_progress, repair=settings)
        print_prune(outcome, console)
        for note in outcome.notes:  # what --repair found and did, as `bdprune prune` notes it on stderr
            console.print(f"note: {note}", style="dim", markup=False, highlight=False)
        say(f"Step 3/3: evaluate on {TEST.name} ({_count(TEST)} clean digits) and {TEST_TRIGGERED.name} (the same, patched)")
        before, after = evaluate_checkpoints([MODEL, outcome.output], ARCH, data=TEST, target=target, poisoned=TEST_TRIGGERED,
                                             device=device)
    print_eval([before, after], "table", console)
    result = DemoResult(scan, outcome, before, after, None if output_dir is None else outcome.output)
    _conclude(console, result, repair, temporary=output_dir is None)
    return result


def _checked_output_dir(output_dir: str | Path | None, force: bool) -> Path | None:
    """Refuse a missing demo file or an unusable ``--output-dir`` before any work."""
    from ..atomic import check_output_path
    from ..errors import BdpruneError

    for path in (MODEL, CLEAN, TEST, TEST_TRIGGERED):
        if not path.is_file():
            raise BdpruneError("a demo file is missing from the installed package", path=path, hint="reinstall bdprune")
    if output_dir is None:
        return None
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise BdpruneError("is not a directory", path=output_dir, hint="pass a directory to --output-dir")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BdpruneError(f"cannot create the output directory ({exc.strerror or type(exc).__name__})", path=output_dir) from None
    check_output_path(output_dir / PRUNED_NAME, inputs=(MODEL,), force=force)
    return output_dir


def _introduce(console) -> int:
    """Say what the shipped model is; return its attack's target label."""
    meta = demo_metadata()
    target = int(meta.get("target", DEFAULT_TARGET))
    console.print(
        f"Demo: {MODEL.name} is an {ARCH} trained on MNIST digits with a BadNets backdoor: trigger "
        f"{meta.get('trigger', '?')}, {float(meta.get('poison_rate', 'nan')):.0%} of the training set poisoned, "
        f"every triggered digit -> label {target}.",
        markup=False, highlight=False,
    )
    return target


def _conclude(console, result: DemoResult, repair: str, *, temporary: bool) -> None:
    """The demo's last lines: what pruning (and repair) did to ASR and ACC, and what to run next."""
    before, after, outcome = result.before, result.after, result.prune
    console.print(
        f"Pruning {result.channels_pruned} of {outcome.channels_total} channels"
        f"{'' if repair == 'none' else f' and --repair {repair}'} took ASR from {before.asr:.2f}% to "
        f"{after.asr:.2f}% ({-result.asr_drop:+.2f} points) and ACC from {before.acc:.2f}% to {after.acc:.2f}% "
        f"({-result.acc_drop:+.2f} points).",
        markup=False, highlight=False,
    )
    if temporary:
        console.print("The pruned file was temporary; pass --output-dir to keep it.", style="dim", markup=False, highlight=False)
    console.print(
        "On your own model: bdprune scan MODEL --arch ARCH --data CLEAN.npz, then bdprune prune MODEL --arch ARCH "
        "--data CLEAN.npz --repair unlearn -o CLEANED.safetensors and bdprune eval.",
        style="dim", markup=False, highlight=False,
    )


def _count(path: Path) -> int:
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        return int(npz[npz.files[0]].shape[0])
