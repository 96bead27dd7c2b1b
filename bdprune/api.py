"""The public API: what the CLI, the demo and a Python caller all use.

>>> import bdprune
>>> result = bdprune.scan_model(model, images)                    # doctest: +SKIP
>>> pruned = bdprune.prune_model(model, result, output="model.pruned.safetensors")  # doctest: +SKIP
>>> run = bdprune.scan_checkpoints(["models/"], "resnet18", data="clean.npz", jobs=2)  # doctest: +SKIP

``scan_model`` and ``prune_model`` never change the model they are given (``in_place=True`` asks
``prune_model`` to); scoring and budgets run on a copy, on the model's own device unless ``device`` says
otherwise. ``scan_checkpoints``, ``prune_checkpoint`` and ``evaluate_checkpoints`` work on files,
as ``bdprune scan``, ``prune`` and ``eval`` do. Errors are :class:`bdprune.errors.BdpruneError`, one
line naming the input and the fix (and the parameter, as the caller wrote it).
"""

from __future__ import annotations

import copy
import hashlib
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .checkpoint import Checkpoint, file_sha256
from .errors import BdpruneError
from .evaluate import EvalResult, evaluate_model
from .fleet import FleetRun, scan_fleet
from .inputs import as_image_set
from .options import ScanSettings, check_batch_size, check_samples, resolve_device
from .prune import check_channels, safetensors_bytes, write_safetensors
from .pruning import PARAMETERS, PruneOutcome, budget_rules, choose_channels, outcome_metadata, prune_and_repair
from .repair import RepairSettings
from .scan import LoadedModel, scan_loaded
from .scoring import ScanFailure, ScanResult


@dataclass
class Pruned(PruneOutcome):
    """What :func:`prune_model` did: everything a :class:`~bdprune.pruning.PruneOutcome` holds (``output``
    is None when nothing was written), the pruned ``model``, and the budget it used."""

    model: Any = None
    max_acc_drop: float | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict of the outcome (the model left out; paths as strings)."""
        data = {k: v for k, v in asdict(self).items() if k != "model"}
        data["output"] = None if self.output is None else str(self.output)
        data["params"] = list(self.params)
        data["channels_pruned"] = sum(map(len, self.channels.values()))
        return data


# The CLI's flags as the Python API spells them, for errors raised by code both share.
PARAMETER_OF_FLAG = {"--method-arg": "method_args", "--max-acc-drop": "max_acc_drop", "--batch-size": "batch_size",
                     "--fail-threshold": "fail_threshold", "--samples": "samples", "--normalize": "normalize", "--device": "device",
                     "--method": "method", "--repair": "repair", "--seed": "seed", "--data": "data", "--val": "val", "--u": "u"}
_FLAG = re.compile("|".join(re.escape(f) for f in sorted(PARAMETER_OF_FLAG, key=len, reverse=True)) + r"(?![\w-])")


@contextmanager
def _parameter_names():
    """Errors from code the CLI shares name the API's parameters (``method_args=``), not its flags."""
    try:
        yield
    except BdpruneError as exc:
        message = _FLAG.sub(lambda m: PARAMETER_OF_FLAG[m.group(0)], exc.message)
        hint = None if exc.hint is None else _FLAG.sub(lambda m: PARAMETER_OF_FLAG[m.group(0)], exc.hint)
        raise BdpruneError(message, path=exc.path, hint=hint) from None


def scan_model(
    model: nn.Module,
    data: Any = None,
    *,
    labels: Any = None,
    method: str | None = None,
    u: float | None = None,
    samples: int | None = 500,
    seed: int = 0,
    normalize: str = "none",
    device: str | torch.device | None = None,
    batch_size: int = 128,
    fail_threshold: float | None = None,
    method_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    show_progress: bool = False,
    thorough: bool = False,
) -> ScanResult:
    """Score every BatchNorm channel of ``model`` and give it a verdict, as ``bdprune scan`` does.

    ``data``: images N x C x H x W in [0, 1] (a tensor or array, with ``labels`` if the method
    trains), an ``(images, labels)`` pair, a torch Dataset, a DataLoader or a data file; None for
    the data-free ``clp``. ``samples`` of them are drawn with ``seed`` exactly as ``--samples``
    draws from a file (a DataLoader is read in its own order). ``method`` defaults to ``bnp`` with
    data and ``clp`` without; ``u`` to the method's threshold; ``device`` to the model's own;
    ``name`` labels the result (default ``<ClassName>``); ``thorough`` adds the per-class probe's
    class gap to the verdict (``--thorough``). Returns a
    :class:`~bdprune.scoring.ScanResult`: ``ranked()``, ``flagged_channels()``, ``verdict``, and
    ``to_dict()``, the JSON report's document."""
    with _parameter_names():
        return _scan_model(model, data, labels, method, u, samples, seed, normalize, device, batch_size, fail_threshold,
                           method_args, name, show_progress, thorough)


def _scan_model(model, data, labels, method, u, samples, seed, normalize, device, batch_size, fail_threshold, method_args, name,
                show_progress, thorough) -> ScanResult:
    dev = _device(model, device)
    check_batch_size(batch_size)
    check_samples(samples, seed)
    images = None if data is None else as_image_set(data, labels, samples=samples, seed=seed)
    settings = ScanSettings(method=method, u=u, seed=seed, normalize=normalize, batch_size=batch_size, fail_threshold=fail_threshold,
                            method_args=_strings(method_args), thorough=thorough)
    resolved = settings.resolve(has_data=images is not None, device=dev)
    return scan_loaded(_loaded(model, name), images, resolved, show_progress=show_progress)


def prune_model(
    model: nn.Module,
    result: ScanResult,
    *,
    u: float | None = None,
    k: int | None = None,
    channels: Mapping[str, Sequence[int]] | None = None,
    max_acc_drop: float | None = None,
    val: Any = None,
    in_place: bool = False,
    output: str | Path | None = None,
    force: bool = False,
    source: str | Path | None = None,
    normalize: str = "none",
    device: str | torch.device | None = None,
    batch_size: int = 128,
    repair: str | RepairSettings = "none",
    repair_data: Any = None,
    seed: int = 0,
) -> Pruned:
    """Prune the channels ``result`` flags in a copy of ``model`` (in ``model`` itself with
    ``in_place=True``), as ``bdprune prune`` does, and write it to ``output`` (safetensors, the
    CLI's metadata) when given.

    At most one of: ``u`` (re-flag the same scores at another threshold), ``k`` (the k most
    suspicious channels), ``channels`` (``{layer: [indices]}``, e.g. a reviewed list), or
    ``max_acc_drop`` with labelled clean ``val`` data (any form :func:`scan_model` takes), which chooses u
    (k for bnp+, anp and rnp) from a clean-accuracy budget. bnp+ always uses a budget (default 1
    point) unless ``k`` or ``channels`` is given. ``source`` is the checkpoint file the model came
    from, whose SHA-256 the file records; without it, the SHA-256 of the unpruned state_dict
    serialized as safetensors (:func:`state_sha256`). ``repair`` (a name in
    :data:`bdprune.repair.REPAIRS`, or a :class:`~bdprune.repair.RepairSettings`) then recovers the pruned model on the
    labelled clean ``repair_data``, as ``prune --repair`` does. Returns :class:`Pruned`; ``.model``
    is the pruned (and repaired) module."""
    with _parameter_names():
        return _prune_model(model, result, u, k, channels, max_acc_drop, val, in_place, output, force, source, normalize, device,
                            batch_size, repair, repair_data, seed)


def _prune_model(model, result, u, k, channels, max_acc_drop, val, in_place, output, force, source, normalize, device, batch_size,
                 repair, repair_data, seed) -> Pruned:
    max_acc_drop, by_k = _selection(result, u=u, k=k, channels=channels, max_acc_drop=max_acc_drop, val=val)
    settings = (repair if isinstance(repair, RepairSettings) else RepairSettings(str(repair))).check()
    if (settings.mode == "none") != (repair_data is None):
        raise BdpruneError("repair and repair_data go together", hint="pass repair='unlearn' (or bn, finetune) with labelled clean repair_data")
    out = None if output is None else Path(output)
    inputs = () if source is None else (Path(source),)
    if out is not None:
        from .atomic import check_output_path

        check_output_path(out, inputs=inputs, force=force)  # fail before any work
    resolved = ScanSettings(normalize=normalize, batch_size=batch_size, seed=seed).resolve(has_data=True, device=_device(model, device))
    digest = None if out is None else (file_sha256(Path(source)) if source is not None else state_sha256(model))
    modes = {m: m.training for m in model.modules()}
    work = model if in_place else _copy(model)
    val_set = None if max_acc_drop is None else as_image_set(val, samples=None, seed=0)
    choice = choose_channels(work, result, resolved, u=u, k=k, channels=channels, max_acc_drop=max_acc_drop, val=val_set, by_k=by_k)
    check_channels(work, choice.channels, choice.params, fill=choice.fill, source=result.checkpoint)
    clean = None if repair_data is None else as_image_set(repair_data, samples=None, seed=0)
    repaired, repair_acc, repair_notes, repair_meta = prune_and_repair(work, choice, settings, clean, resolved)
    work.load_state_dict(repaired.state_dict())
    for module, training in modes.items():  # a budget's forward passes put the model in eval mode
        module.train(training)
    pruned = Pruned(out, result.method, choice.u, choice.channels, choice.params, result.channels_total, choice.curve, choice.base_acc,
                    choice.notes + repair_notes, choice.k, choice.fill is not None, settings.mode, repair_acc, model=work,
                    max_acc_drop=max_acc_drop)
    if out is not None:
        metadata = outcome_metadata(pruned, result.samples, None if source is None else Path(source), choice.fill,
                                    {**choice.extra, **repair_meta}, source_sha256=digest)
        write_safetensors(_cpu_state(work), out, metadata, source=inputs[0] if inputs else None, force=force)
    return pruned


def _selection(result: ScanResult, *, u, k, channels, max_acc_drop, val) -> tuple[float | None, bool]:
    """Refuse conflicting choices of what to prune; the budget (bnp+ always has one) and whether
    it chooses a count k."""
    chosen = [name for name, value in (("u", u), ("k", k), ("channels", channels), ("max_acc_drop", max_acc_drop)) if value is not None]
    if len(chosen) > 1:
        raise BdpruneError(f"pass one of u, k, channels and max_acc_drop, not {' and '.join(chosen)}")
    if not isinstance(result, ScanResult):
        raise BdpruneError(f"result must be the ScanResult of bdprune.scan_model, not a {type(result).__name__}")
    if result.ranking == "network" and not chosen and val is None:  # bnp+: the amount always comes from a budget
        raise BdpruneError(f"{result.method} chooses how many channels to prune from a clean-accuracy budget",
                           hint="pass val= (labelled clean samples), or k= or channels=")
    ranking = None if chosen and chosen != ["max_acc_drop"] else result.ranking
    max_acc_drop, by_k = budget_rules(ranking, max_acc_drop, val is not None, names=PARAMETERS)
    if max_acc_drop is not None and val is None:  # in memory there are no scanned samples to measure on
        raise BdpruneError("max_acc_drop and val go together", hint="pass both to choose the amount from a clean-accuracy budget")
    return max_acc_drop, by_k


def scan_checkpoints(checkpoints: Sequence[str | Path], arch: str | None, **options: Any) -> FleetRun:
    """Scan checkpoint files (or directories of them) as ``bdprune scan`` does: the rows in the
    order given, each a :class:`~bdprune.scoring.ScanResult` with its verdict or a
    :class:`~bdprune.scoring.ScanFailure`. ``options`` are :class:`~bdprune.options.ScanSettings`
    fields (method, u, seed, normalize, device, batch_size, num_classes, arch_args, trust_pickle,
    fail_threshold, method_args, thorough) and :func:`bdprune.fleet.scan_fleet`'s keywords (data, samples,
    jobs, ray, ray_address, resume, on_row, show_progress, and ``strict``, here True by default:
    the error of a single checkpoint is raised instead of becoming a row)."""
    names = {f.name for f in fields(ScanSettings)}
    settings = ScanSettings(arch=arch, **{k: v for k, v in options.items() if k in names})
    return scan_fleet(checkpoints, settings, **{"strict": True, **{k: v for k, v in options.items() if k not in names}})


def prune_checkpoint(checkpoint: str | Path, arch: str | None, *, data: str | Path | None = None, samples: int = 500,
                     output: str | Path | None = None, force: bool = False, channels_report: str | Path | None = None,
                     max_acc_drop: float | None = None, val: str | Path | None = None, repair: RepairSettings | str | None = None,
                     show_progress: bool = True, image_size: object = None, **settings: Any) -> PruneOutcome:
    """``bdprune prune``: see :func:`bdprune.pruning.prune_checkpoint`; ``settings`` are
    :class:`~bdprune.options.ScanSettings` fields."""
    from .pruning import prune_checkpoint as run

    repair = RepairSettings(repair) if isinstance(repair, str) else repair
    return run(checkpoint, ScanSettings(arch=arch, **settings), data=data, samples=samples, output=output, force=force,
               channels_report=channels_report, max_acc_drop=max_acc_drop, val=val, repair=repair, show_progress=show_progress,
               image_size=image_size)


def evaluate_checkpoints(
    checkpoints: Sequence[str | Path],
    arch: str,
    *,
    data: str | Path,
    target: int | None = None,
    trigger: str | None = None,
    poisoned: str | Path | None = None,
    normalize: str = "none",
    device: str = "auto",
    batch_size: int = 256,
    num_classes: int | None = None,
    arch_args: Mapping[str, str] | None = None,
    trust_pickle: bool = False,
    strip_prefix: str | None = None,
    image_size: object = None,
) -> list[EvalResult]:
    """``bdprune eval``: ACC (and ASR with a trigger or a poisoned set) of each checkpoint on the same
    data (resized to ``image_size`` when given)."""
    from .data import check_fits, load_images
    from .normalize import parse_normalize
    from .scan import check_input, load_model
    from .triggers import parse_trigger

    if trigger is not None and poisoned is not None:
        raise BdpruneError("pass --trigger or --poisoned, not both")
    if (trigger is not None or poisoned is not None) and target is None:
        raise BdpruneError("ASR needs --target, the attack's target label")
    check_batch_size(batch_size)
    trig = parse_trigger(trigger) if trigger is not None else None
    dev, norm = resolve_device(device), parse_normalize(normalize)
    clean = load_images(data, image_size=image_size)
    poisoned_set = load_images(poisoned, image_size=image_size) if poisoned is not None else None
    results = []
    for path in checkpoints:
        loaded = load_model(path, arch, num_classes=num_classes, arch_args=arch_args, trust_pickle=trust_pickle, strip_prefix=strip_prefix)
        fitted = check_input(loaded, clean)
        check_fits(fitted, loaded.in_channels, loaded.num_classes)
        if target is not None and loaded.num_classes is not None and not 0 <= target < loaded.num_classes:
            raise BdpruneError(f"--target {target} is not a class of this model (0..{loaded.num_classes - 1})")
        results.append(evaluate_model(loaded.model, fitted, checkpoint=str(path), target=target, trigger=trig,
                                      poisoned=None if poisoned_set is None else check_input(loaded, poisoned_set),
                                      device=dev, batch_size=batch_size, normalize=norm))
    return results


def write_report(results: ScanResult | Sequence[ScanResult], path: str | Path, *, format: str = "html", top: int = 20,
                 errors: Sequence[ScanFailure] = ()) -> Path:
    """Write a scan report (``html``, ``json``, ``markdown``, ``sarif``, ``table`` or ``jsonl``, as
    ``scan --format``) to ``path`` all-or-nothing, with ``errors`` (checkpoints that could not be
    scanned) where the format shows them; returns the path."""
    import io

    from rich.console import Console

    from .atomic import check_output_path, write_text_atomic
    from .report import REPORTERS

    results = [results] if isinstance(results, ScanResult) else list(results)
    reporter = REPORTERS.get(format)()
    path = Path(path)
    check_output_path(path, inputs=tuple(Path(r.checkpoint) for r in results), force=True)
    buffer = io.StringIO()
    reporter.write(results, Console(file=buffer, width=140, color_system=None), top=top, errors=errors)
    write_text_atomic(path, buffer.getvalue())
    return path


def plot_scan(results: ScanResult | Sequence[ScanResult], path: str | Path | None = None):
    """The ``scan --plot`` figure (every channel's score per layer, flags, thresholds, verdict);
    written to ``path`` (.png or .svg) when given. Returns the matplotlib Figure. Needs ``bdprune[plot]``."""
    from .plot import check_plot_path, save_figure, scan_figure

    if path is not None:
        check_plot_path(Path(path), option="path")
    fig = scan_figure(results)
    if path is not None:
        save_figure(fig, Path(path))
    return fig


def plot_curve(outcome: PruneOutcome, path: str | Path | None = None, *, max_acc_drop: float | None = None):
    """The ``prune --plot`` figure: clean accuracy against channels pruned along a budget's
    curve, the chosen point marked; written to ``path`` when given. Returns the Figure."""
    from .plot import check_plot_path, curve_figure, save_figure

    if path is not None:
        check_plot_path(Path(path), option="path")
    budget = max_acc_drop if max_acc_drop is not None else getattr(outcome, "max_acc_drop", None)
    fig = curve_figure(outcome, max_acc_drop=budget)
    if path is not None:
        save_figure(fig, Path(path))
    return fig


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of ``model``'s state_dict serialized as safetensors with no metadata: what a file
    :func:`prune_model` writes records as ``source_sha256`` when the model never was a file."""
    return hashlib.sha256(safetensors_bytes(_cpu_state(model), {})).hexdigest()


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu") for key, value in model.state_dict().items()}


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, checked; by default the device of the model's first parameter or buffer."""
    if device is not None:
        return resolve_device(str(device))
    if not isinstance(model, nn.Module):
        raise BdpruneError(f"model must be a torch.nn.Module, not a {type(model).__name__}", hint="to scan a file, use bdprune.scan_checkpoints")
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:  # a module holding something deepcopy refuses (a lock, a handle)
        raise BdpruneError(f"cannot copy the model to work on ({type(exc).__name__}: {exc})",
                           hint="prune with in_place=True, or make the model deep-copyable") from None


def _loaded(model: nn.Module, name: str | None) -> LoadedModel:
    """A copy of ``model`` in eval mode, dressed as a checkpoint named ``name``."""
    if not isinstance(model, nn.Module):
        raise BdpruneError(f"model must be a torch.nn.Module, not a {type(model).__name__}", hint="to scan a file, use bdprune.scan_checkpoints")
    work = _copy(model).eval()
    label = name or f"<{type(model).__name__}>"
    checkpoint = Checkpoint(path=Path(label), tensors=dict(work.state_dict()))
    return LoadedModel(work, checkpoint, f"{type(model).__module__}.{type(model).__qualname__}", None)


def _strings(values: Mapping[str, Any] | None) -> dict[str, str] | None:
    return None if values is None else {str(key): str(value) for key, value in values.items()}
