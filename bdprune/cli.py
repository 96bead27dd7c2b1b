"""The command line: parse options and call the public API (:mod:`bdprune.api`). No logic of its own lives here.

torch is imported only inside the commands, so ``bdprune --help`` answers fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

try:  # recent Typer vendors click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click_exceptions

from ._version import __version__
from .cli_help import panelled

app = typer.Typer(
    name="bdprune",
    help="Audit image-classifier checkpoints for backdoor neurons (BNP, EP, CLP) and prune them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = False

# Options shared by several commands.
ArchOpt = Annotated[Optional[str], typer.Option("--arch", "-a", rich_help_panel="Input", help="Architecture: a built-in name (`bdprune archs`), torchvision:NAME, timm:NAME, file.py:factory or module:factory.", metavar='NAME')]
ArchArgOpt = Annotated[Optional[List[str]], typer.Option("--arch-arg", rich_help_panel="Input", help="key=value passed to the architecture factory (repeatable).", metavar='KEY=VALUE')]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", rich_help_panel="Input", help="Classifier size; inferred from the checkpoint when omitted.", metavar='N')]
DataOpt = Annotated[Optional[Path], typer.Option("--data", "-d", rich_help_panel="Input", help="Images: .npz (images/labels or x/y), an ImageFolder directory or CIFAR-10 python batches.", metavar='PATH')]
SamplesOpt = Annotated[int, typer.Option("--samples", "-n", rich_help_panel="Input", help="How many samples to draw from --data (deterministic with --seed).", metavar='N')]
SeedOpt = Annotated[int, typer.Option("--seed", rich_help_panel="Input", help="Seed for drawing samples.", metavar='N')]
NormalizeOpt = Annotated[str, typer.Option("--normalize", rich_help_panel="Input", help="none, cifar10, imagenet, mnist, MEAN,STD or m1,m2,m3,s1,s2,s3 (the paper: none).", metavar='SPEC')]
DeviceOpt = Annotated[str, typer.Option("--device", rich_help_panel="Compute", help="auto (CUDA when available), cpu, cuda or cuda:N.", metavar='DEVICE')]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", rich_help_panel="Compute", help="Images per forward pass.", metavar='N')]
MethodOpt = Annotated[Optional[str], typer.Option("--method", "-m", rich_help_panel="Method", help="bnp, ep, clp, anp, rnp (published) or bnp+ (`bdprune methods`); default bnp with --data, else clp.", metavar='NAME')]
UOpt = Annotated[Optional[float], typer.Option("--u", "-u", rich_help_panel="Thresholds", help="Threshold: standard deviations per layer (bnp/ep/clp, default 3) or over the network (bnp+); the largest mask pruned (anp/rnp, default 0.2).", show_default=False, metavar='U')]
MethodArgOpt = Annotated[Optional[List[str]], typer.Option("--method-arg", rich_help_panel="Method", help="key=value setting of the method, e.g. iterations=500 for anp (repeatable; `bdprune methods` lists them).", metavar='KEY=VALUE')]
TrustOpt = Annotated[bool, typer.Option("--trust-pickle", rich_help_panel="Input", help="Allow full pickles (can run code from the file). Only for files you trust.")]
StripPrefixOpt = Annotated[Optional[str], typer.Option("--strip-prefix", rich_help_panel="Input", help="Key prefix the model's weights sit under (e.g. model.), where detection cannot decide; entries outside it are left out.", metavar='PREFIX')]
ImageSizeOpt = Annotated[Optional[str], typer.Option("--image-size", rich_help_panel="Input", help="Resize the images to H[,W]: shorter side, then a centre crop (also runs images far larger than the architecture's input at the size given).", metavar='H[,W]')]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bdprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    global _debug
    _debug = debug
    if ctx.resilient_parsing:
        return
    from .config import load_config
    from .errors import BdpruneError

    try:
        ctx.obj = load_config()  # read once; `bdprune config` shows the same object
        ctx.default_map = ctx.obj.default_map()
    except BdpruneError as exc:
        raise _fail(str(exc)) from None


def _fail(message: str, code: int = 2) -> typer.Exit:
    _error_line(message)
    return typer.Exit(code)


def _error_line(message: str) -> None:
    from .errors import one_line
    from .progress import stderr_console

    stderr_console().print(f"error: {one_line(message)}", style="bold red", markup=False, highlight=False, emoji=False)


def _guarded(run):
    """Run a command body; a BdpruneError becomes one line on stderr and exit code 2."""
    from .errors import BdpruneError

    try:
        return run()
    except BdpruneError as exc:
        if _debug:
            raise
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; no output was written", 130) from None
    except (typer.Exit, click_exceptions.ClickException):
        raise
    except BrokenPipeError:  # the reader went away (`bdprune scan ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        raise typer.Exit(141) from None  # 128 + SIGPIPE, as a shell reports it; never a false 0
    except Exception as exc:  # the file system refused (the user's to fix), or a bug in bdprune: one line, no traceback
        if _debug:
            raise
        from .errors import describe

        raise _fail(describe(exc)) from None


def _key_values(items: list[str] | None, option: str = "--arch-arg") -> dict[str, str]:
    from .errors import BdpruneError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BdpruneError(f"bad {option} {item!r}", hint="use key=value")
        out[key.strip()] = value.strip()
    return out


def _note(text: str) -> None:
    from .errors import one_line
    from .progress import stderr_console

    stderr_console().print(f"note: {one_line(text)}", style="dim", markup=False, highlight=False, emoji=False)


@app.command(cls=panelled(checkpoints="Checkpoint files (.pt/.pth/.bin/.safetensors) or directories of them."), epilog="Examples:\n\n  bdprune scan model.pt --arch resnet18 --data clean.npz\n\n  bdprune scan model.pt --arch resnet18 --data clean.npz --format html -o report.html\n\n  bdprune scan models/ --arch resnet18 --data clean.npz --jobs 4 --format jsonl --resume audit.jsonl")
def scan(
    checkpoints: Annotated[List[Path], typer.Argument(show_default=False, metavar="CHECKPOINT")],
    arch: ArchOpt = None,
    method: MethodOpt = None,
    data: DataOpt = None,
    u: UOpt = None,
    method_arg: MethodArgOpt = None,
    samples: SamplesOpt = 500,
    seed: SeedOpt = 0,
    normalize: NormalizeOpt = "none",
    top: Annotated[int, typer.Option("--top", "-k", rich_help_panel="Output", help="How many channels the ranked table shows.", metavar='N')] = 20,
    output_format: Annotated[str, typer.Option("--format", "-f", rich_help_panel="Output", help="table, json, sarif, markdown, html (one self-contained page with plots; needs bdprune[plot]) or jsonl (one JSON row per checkpoint, with its sha256, written as each finishes: completion order; -o FILE appends).", metavar='FORMAT')] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel="Output", help="Write the report to FILE instead of stdout.", metavar='FILE')] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", rich_help_panel="Output", help="Also draw every channel's score per layer, flags, thresholds and the verdict to FILE (.png or .svg; needs bdprune[plot]).", metavar='FILE')] = None,
    fail_threshold: Annotated[Optional[float], typer.Option("--fail-threshold", rich_help_panel="Thresholds", help="Verdict threshold on the checkpoint statistic (default: calibrated per method).", metavar='X')] = None,
    thorough: Annotated[bool, typer.Option("--thorough", rich_help_panel="Thresholds", help="bnp's verdict also runs the per-class trigger probe (up to 100 classes; its cost grows with them, about 8 passes over 500 samples per class) and flags a class that leads every other by more than its bar: catches more low-rate backdoors.")] = False,
    exit_zero: Annotated[bool, typer.Option("--exit-zero", rich_help_panel="Thresholds", help="Exit 0 even when a checkpoint is suspicious (report-only runs).")] = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 128,
    num_classes: NumClassesOpt = None,
    arch_arg: ArchArgOpt = None,
    trust_pickle: TrustOpt = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", rich_help_panel="Fleet", help="Scan N checkpoints at a time, in N worker processes (default 1: one after another in this process).", metavar='N')] = 1,
    use_ray: Annotated[bool, typer.Option("--ray", rich_help_panel="Fleet", help="One Ray task per checkpoint, on the cluster at RAY_ADDRESS or a new local one (needs bdprune[ray]; every node must see the checkpoint paths).")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", rich_help_panel="Fleet", help="Run the Ray tasks on the existing cluster at ADDRESS (implies --ray).", metavar='ADDRESS')] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", rich_help_panel="Fleet", help="With --format jsonl: skip checkpoints whose SHA-256 has a row without an error in FILE (an earlier run's report) and append the new rows to FILE.", metavar='FILE')] = None,
    strip_prefix: StripPrefixOpt = None,
    image_size: ImageSizeOpt = None,
) -> None:
    """Score every BatchNorm channel, report the most suspicious, and give each checkpoint a verdict.

    Exit 0 = every verdict clean, 1 = a checkpoint is suspicious, 2 = usage or input error (with
    several checkpoints: one could not be scanned; the others still are). The worst over all.
    """

    def run() -> int:
        from .api import scan_checkpoints
        from .fleet.stream import JsonlSink, report_file
        from .report import REPORTERS
        from .report.jsonl import jsonl_row

        REPORTERS.get(output_format)()  # fail before any scan: an unknown --format, or html without its extra
        streaming = output_format == "jsonl"
        target = report_file(output_format, output, resume)
        _check_outputs(target, plot, inputs=tuple(checkpoints) + ((data,) if data is not None else ()))
        sink = JsonlSink(target) if streaming else None
        try:
            fleet = scan_checkpoints(
                checkpoints, arch, data=data, samples=samples, jobs=jobs, ray=use_ray, ray_address=ray_address, resume=resume,
                strict=not streaming, on_row=None if sink is None else (lambda row: sink.write(jsonl_row(row.outcome, row.sha256))),
                method=method, u=u, seed=seed, normalize=normalize, device=device, batch_size=batch_size, num_classes=num_classes,
                arch_args=_key_values(arch_arg), trust_pickle=trust_pickle, fail_threshold=fail_threshold,
                method_args=_key_values(method_arg, "--method-arg"), strip_prefix=strip_prefix, image_size=image_size, thorough=thorough,
            )
        except KeyboardInterrupt:
            if sink is None:
                raise
            raise _fail(sink.interrupted(), 130) from None
        finally:
            if sink is not None:
                sink.close()
        _report_fleet(fleet, output_format, output, target, resume, plot, top=top, streaming=streaming)
        code = fleet.exit_code()
        return 0 if exit_zero and code == 1 else code

    raise typer.Exit(_guarded(run))


def _check_outputs(target: Path | None, plot: Path | None, *, inputs: tuple[Path, ...]) -> None:
    """Fail before scanning when the report or the plot could not be written, or would overwrite a checkpoint or the data."""
    if target is not None:
        from .atomic import check_output_path

        check_output_path(target, inputs=inputs, force=True)
    if plot is not None:
        from .plot import check_plot_path

        check_plot_path(plot, inputs=inputs + ((target,) if target else ()))


def _report_fleet(fleet, output_format: str, output: Path | None, target: Path | None, resume: Path | None, plot: Path | None, *,
                  top: int, streaming: bool) -> None:
    """Notes on stderr, the report (unless its rows were streamed), the plot, then one error line per failure."""
    from .errors import BdpruneError

    results, failures = fleet.results, fleet.failures
    if len(fleet.rows) == 1 and failures and not streaming:  # one checkpoint: its error, as always
        raise BdpruneError(failures[0].error)
    for result in results:
        for note in result.notes:
            _note(f"{result.checkpoint}: {note}" if len(fleet.rows) > 1 else note)
    if fleet.resumed:
        _note(f"--resume: skipped {len(fleet.resumed)} checkpoints already in {resume}")
    if not streaming:
        _emit(output_format, results, output, top=top, errors=failures)
    elif target is not None:
        _note(f"{target}: {len(fleet.rows)} new row(s) appended")
    if plot is not None and results:
        from .api import plot_scan

        plot_scan(results, plot)
        _note(f"plot written to {plot}")
    for failure in failures:
        _error_line(failure.error)


def _emit(output_format: str, results, output: Path | None, *, top: int, errors=()) -> None:
    if output is None:
        from .progress import stdout_console
        from .report import REPORTERS

        REPORTERS.get(output_format)().write(results, stdout_console(soft_wrap=False), top=top, errors=errors)
        return
    from .api import write_report

    write_report(results, output, format=output_format, top=top, errors=errors)
    _note(f"report written to {output}")


@app.command(cls=panelled(checkpoint="Checkpoint to prune (never modified)."), epilog="Examples:\n\n  bdprune prune model.pt --arch resnet18 --data clean.npz --repair unlearn -o clean.safetensors\n\n  bdprune prune model.pt --arch resnet18 --method bnp --u 3 --data clean.npz\n\n  bdprune prune model.pt --arch resnet18 --channels report.json")
def prune(
    checkpoint: Annotated[Path, typer.Argument(show_default=False, metavar="CHECKPOINT")],
    arch: ArchOpt,
    method: MethodOpt = None,
    data: DataOpt = None,
    u: UOpt = None,
    method_arg: MethodArgOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel="Output", help="Output .safetensors (default: <stem>.pruned.safetensors beside the input).", metavar='FILE')] = None,
    force: Annotated[bool, typer.Option("--force", rich_help_panel="Output", help="Replace an existing output file.")] = False,
    channels: Annotated[Optional[Path], typer.Option("--channels", rich_help_panel="Method", help="Prune exactly the channels flagged in this `scan --format json` report.", metavar='REPORT')] = None,
    max_acc_drop: Annotated[Optional[float], typer.Option("--max-acc-drop", rich_help_panel="Thresholds", help="Choose u: the smallest on a grid whose ACC on --val drops at most this many points. bnp+ always uses a budget (default 1, on --data unless --val is given) to choose how many top-ranked channels to prune.", metavar='POINTS')] = None,
    val: Annotated[Optional[Path], typer.Option("--val", rich_help_panel="Input", help="Labelled clean validation data for --max-acc-drop and --repair (never test or poisoned data).", metavar='PATH')] = None,
    repair: Annotated[str, typer.Option("--repair", rich_help_panel="Repair", help="After pruning, on the labelled clean samples: none, bn (re-estimate BN statistics), finetune (all weights; pruned channels stay pruned), unlearn (finetune with the triggers the per-class probe synthesizes, true labels: removes the backdoor; see README), or a published purification at its paper's defaults: fst (Feature Shift Tuning), sau (Shared Adversarial Unlearning), nc (Neural Cleanse's unlearning).", metavar='MODE')] = "none",
    repair_epochs: Annotated[Optional[int], typer.Option("--repair-epochs", rich_help_panel="Repair", help="Epochs of the --repair training [default: finetune, unlearn, fst 10; sau 100; nc 100 (of unlearning)].", metavar='N', show_default=False)] = None,
    repair_lr: Annotated[Optional[float], typer.Option("--repair-lr", rich_help_panel="Repair", help="Learning rate of the --repair training [default: 0.01 (SGD); sau 0.0001 (Adam)].", metavar='LR', show_default=False)] = None,
    repair_holdout: Annotated[float, typer.Option("--repair-holdout", rich_help_panel="Repair", help="--repair finetune / unlearn: share of the clean samples held back from training; the repair stops once the synthesized triggers no longer move them and their accuracy is back (0: a fixed number of epochs).", metavar='SHARE')] = 0.0,
    repair_distill: Annotated[float, typer.Option("--repair-distill", rich_help_panel="Repair", help="--repair finetune / unlearn: weight of a distillation term, the KL divergence from the model before pruning on the clean images (0: none).", metavar='W')] = 0.0,
    repair_refit_bn: Annotated[bool, typer.Option("--repair-refit-bn/--no-repair-refit-bn", rich_help_panel="Repair", help="--repair finetune / unlearn: re-estimate the BN running statistics on the clean samples after training (the trigger-carrying copies it trains on leave them off).")] = True,
    plot: Annotated[Optional[Path], typer.Option("--plot", rich_help_panel="Output", help="Draw clean accuracy against channels pruned along the --max-acc-drop search, chosen point marked, to FILE (.png or .svg; needs bdprune[plot]).", metavar='FILE')] = None,
    samples: SamplesOpt = 500,
    seed: SeedOpt = 0,
    normalize: NormalizeOpt = "none",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 128,
    num_classes: NumClassesOpt = None,
    arch_arg: ArchArgOpt = None,
    trust_pickle: TrustOpt = False,
    strip_prefix: StripPrefixOpt = None,
    image_size: ImageSizeOpt = None,
) -> None:
    """Zero the flagged channels (BNP/EP: BN weight; CLP: weight and bias) and write a safetensors file."""

    def run() -> int:
        from .api import plot_curve, prune_checkpoint
        from .methods.bnp_plus import DEFAULT_MAX_ACC_DROP
        from .repair import RepairSettings
        from .views import print_prune

        if plot is not None:
            _check_prune_plot(plot, method, data, max_acc_drop, channels, inputs=tuple(p for p in (checkpoint, data, val, channels, output) if p))
        outcome = prune_checkpoint(
            checkpoint, arch, data=data, samples=samples, output=output, force=force, channels_report=channels, max_acc_drop=max_acc_drop,
            val=val, repair=RepairSettings(repair, repair_epochs, repair_lr, holdout=repair_holdout, distill=repair_distill, refit_bn=repair_refit_bn), method=method, u=u, seed=seed, normalize=normalize,
            device=device, batch_size=batch_size, num_classes=num_classes, arch_args=_key_values(arch_arg), trust_pickle=trust_pickle,
            method_args=_key_values(method_arg, "--method-arg"), strip_prefix=strip_prefix, image_size=image_size,
        )
        for note in outcome.notes:
            _note(note)
        print_prune(outcome)
        if plot is not None:
            plot_curve(outcome, plot, max_acc_drop=max_acc_drop if max_acc_drop is not None else DEFAULT_MAX_ACC_DROP)
            _note(f"plot written to {plot}")
        return 0

    raise typer.Exit(_guarded(run))


def _check_prune_plot(plot: Path, method, data, max_acc_drop, channels, *, inputs) -> None:
    """Refuse ``prune --plot`` up front where no accuracy curve will be measured."""
    from .errors import BdpruneError
    from .options import choose_method
    from .plot import check_plot_path

    budgeted = channels is None and (max_acc_drop is not None or choose_method(method, data is not None)[0].ranking == "network")
    if not budgeted:
        raise BdpruneError("--plot draws the clean-accuracy curve of a --max-acc-drop search, and this prune runs none",
                           hint="add --max-acc-drop P (with --val for bnp, ep, clp), or leave out --plot")
    check_plot_path(plot, inputs=inputs)


@app.command(cls=panelled(checkpoint="Checkpoint to evaluate."), name="eval", epilog="Examples:\n\n  bdprune eval model.pt --arch resnet18 --data test.npz --trigger patch:size=3,pos=br --target 0 --compare clean.safetensors\n\n  bdprune eval model.pt --arch resnet18 --data test.npz --format json")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(show_default=False, metavar="CHECKPOINT")],
    arch: ArchOpt,
    data: Annotated[Path, typer.Option("--data", "-d", rich_help_panel="Input", help="Labelled clean test images.", metavar='PATH')],
    target: Annotated[Optional[int], typer.Option("--target", "-t", rich_help_panel="Input", help="The attack's target label (for ASR).", metavar='CLASS')] = None,
    trigger: Annotated[Optional[str], typer.Option("--trigger", rich_help_panel="Input", help="patch:size=3,pos=br | patch:image=P.png | blend:noise,seed=S,alpha=0.2 | blend:image=P.png,alpha=0.2 | sig:delta=0.08,freq=6", metavar='SPEC')] = None,
    poisoned: Annotated[Optional[Path], typer.Option("--poisoned", rich_help_panel="Input", help="Already-triggered images (optional true_labels array).", metavar='PATH')] = None,
    compare: Annotated[Optional[Path], typer.Option("--compare", rich_help_panel="Input", help="A second checkpoint (e.g. the pruned one) evaluated on the same data.", metavar='CHECKPOINT')] = None,
    output_format: Annotated[str, typer.Option("--format", "-f", rich_help_panel="Output", help="table or json.", metavar='FORMAT')] = "table",
    normalize: NormalizeOpt = "none",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 256,
    num_classes: NumClassesOpt = None,
    arch_arg: ArchArgOpt = None,
    trust_pickle: TrustOpt = False,
    strip_prefix: StripPrefixOpt = None,
    image_size: ImageSizeOpt = None,
) -> None:
    """Clean accuracy (ACC) and attack success rate (ASR), optionally before / after side by side."""

    def run() -> int:
        from .api import evaluate_checkpoints
        from .views import print_eval

        results = evaluate_checkpoints(
            [checkpoint] + ([compare] if compare else []), arch, data=data, target=target, trigger=trigger,
            poisoned=poisoned, normalize=normalize, device=device, batch_size=batch_size, num_classes=num_classes,
            arch_args=_key_values(arch_arg), trust_pickle=trust_pickle, strip_prefix=strip_prefix, image_size=image_size,
        )
        print_eval(results, output_format)
        return 0

    raise typer.Exit(_guarded(run))


@app.command(cls=panelled(), epilog="Examples:\n\n  bdprune demo\n\n  bdprune demo --repair none --output-dir out/")
def demo(
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", rich_help_panel="Output", help="Keep the pruned model here (default: a temporary directory, removed).", metavar='DIR')] = None,
    force: Annotated[bool, typer.Option("--force", rich_help_panel="Output", help="Replace an existing pruned file in --output-dir.")] = False,
    top: Annotated[int, typer.Option("--top", "-k", rich_help_panel="Output", help="How many channels the ranked table shows.", metavar='N')] = 10,
    device: DeviceOpt = "auto",
    repair: Annotated[str, typer.Option("--repair", rich_help_panel="Repair", help="The repair after pruning: unlearn (default, what the README recommends), finetune, bn or none (BNP alone).", metavar='MODE')] = "unlearn",
) -> None:
    """Run scan -> prune -> eval on the built-in backdoored MNIST model and show what each step does."""

    def run() -> int:
        from .demo import run_demo

        run_demo(output_dir, force=force, top=top, device=device, repair=repair)
        return 0

    raise typer.Exit(_guarded(run))


@app.command(cls=panelled(pattern="Shell-style filter, e.g. 'resnet*' (default: every one)."))
def archs(pattern: Annotated[str, typer.Argument(metavar="PATTERN", show_default=False)] = "*") -> None:
    """List the built-in architectures."""

    def run() -> int:
        from .archs import ARCHS

        for name in ARCHS.names(pattern):
            spec = ARCHS.get(name)
            shape = "x".join(map(str, spec.input_shape))
            typer.echo(f"{name:<16} {shape:<9} {spec.summary}")
        typer.echo("external: torchvision:NAME, timm:NAME, path/to/file.py:factory, package.module:factory")
        return 0

    raise typer.Exit(_guarded(run))


@app.command(cls=panelled())
def config(ctx: typer.Context) -> None:
    """Print the effective settings and where each came from ([tool.bdprune] in pyproject.toml)."""

    def run() -> int:
        cfg = ctx.find_root().obj
        typer.echo(f"config file: {cfg.path or 'none found (searched from the working directory upward)'}")
        for key, value, source in cfg.effective():
            typer.echo(f"{key:<15} {str(value):<24} {source}")
        typer.echo("command-line flags override these.")
        return 0

    raise typer.Exit(_guarded(run))


@app.command(cls=panelled())
def methods() -> None:
    """List the scoring methods."""

    def run() -> int:
        from .methods import METHODS

        for name in METHODS.names():
            cls = METHODS.get(name)
            data = f"data: {cls.data_role}" if cls.data_role else "data-free"
            typer.echo(f"{name:<6} {data:<14} {cls.summary}")
            if cls.defaults:
                typer.echo(f"{'':<21} --method-arg: " + ", ".join(f"{k}={v:g}" for k, v in cls.defaults.items()))
        return 0

    raise typer.Exit(_guarded(run))


def main() -> None:
    """Console-script entry point: usage errors become one line on stderr and exit code 2."""
    from .allocator import keep_freed_memory

    keep_freed_memory()
    try:
        code = app(standalone_mode=False)
    except click_exceptions.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # `bdprune` alone: the help, as --help prints it
            sys.stdout.write(exc.ctx.get_help() + "\n")
            sys.exit(0)
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        from .errors import one_line

        sys.stderr.write(f"error: {one_line(exc.format_message())}{hint}\n")
        code = 2
    except typer.Abort:  # the vendored click in recent Typer has no exceptions.Abort
        sys.stderr.write("error: aborted\n")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
