"""The Python API: scan and prune an ``nn.Module`` you hold, with the same code the CLI runs.

>>> import bdprune
>>> result = bdprune.scan_model(model, images)                    # doctest: +SKIP
>>> pruned = bdprune.prune_model(model, result, output="model.pruned.safetensors")  # doctest: +SKIP

``scan_model`` and ``prune_model`` never change the model they are given (``in_place=True`` asks
``prune_model`` to); scoring and budgets run on a copy, on the model's own device unless ``device`` says
otherwise. Errors are :class:`bdprune.errors.BdpruneError`, one line naming the input and the fix.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .checkpoint import Checkpoint, file_sha256
from .core import PruneOutcome, choose_amount, prune_and_repair, scan_loaded
from .data import parse_normalize
from .errors import BdpruneError
from .inputs import as_image_set
from .prune import check_channels, mask_model, pruning_metadata, safetensors_bytes, write_safetensors
from .repair import RepairSettings
from .scan import LoadedModel, check_batch_size, check_samples, resolve_device
from .scoring import ScanFailure, ScanResult


@dataclass
class Pruned(PruneOutcome):
    """What :func:`prune_model` did: everything a :class:`~bdprune.core.PruneOutcome` holds (``output``
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
) -> ScanResult:
    """Score every BatchNorm channel of ``model`` and give it a verdict, as ``bdprune scan`` does.

    ``data``: images N x C x H x W in [0, 1] (a tensor or array, with ``labels`` if the method
    trains), an ``(images, labels)`` pair, a torch Dataset, a DataLoader or a data file; None for
    the data-free ``clp``. ``samples`` of them are drawn with ``seed`` exactly as ``--samples``
    draws from a file (a DataLoader is read in its own order). ``method`` defaults to ``bnp`` with
    data and ``clp`` without; ``u`` to the method's threshold; ``device`` to the model's own;
    ``name`` labels the result (default ``<ClassName>``). Returns a
    :class:`~bdprune.scoring.ScanResult`: ``ranked()``, ``flagged_channels()``, ``verdict``, and
    ``to_dict()``, the JSON report's document."""
    dev = _device(model, device)
    check_batch_size(batch_size)
    check_samples(samples, seed)
    images = None if data is None else as_image_set(data, labels, samples=samples, seed=seed)
    loaded = _loaded(model, name, dev)
    return scan_loaded(
        loaded, images, method=method, u=u, seed=seed, normalize=normalize, device=str(dev), batch_size=batch_size,
        show_progress=show_progress, fail_threshold=fail_threshold, method_args=_strings(method_args),
    )


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
    serialized as safetensors (:func:`state_sha256`). ``repair`` (``bn``, ``finetune`` or
    ``unlearn``, or a :class:`~bdprune.repair.RepairSettings`) then recovers the pruned model on the
    labelled clean ``repair_data``, as ``prune --repair`` does. Returns :class:`Pruned`; ``.model``
    is the pruned (and repaired) module."""
    chosen = [name for name, value in (("u", u), ("k", k), ("channels", channels), ("max_acc_drop", max_acc_drop)) if value is not None]
    if len(chosen) > 1:
        raise BdpruneError(f"pass one of u, k, channels and max_acc_drop, not {' and '.join(chosen)}")
    if not isinstance(result, ScanResult):
        raise BdpruneError(f"result must be the ScanResult of bdprune.scan_model, not a {type(result).__name__}")
    if result.ranking == "network" and not chosen:  # bnp+: the amount always comes from a budget
        from .methods.bnp_plus import DEFAULT_MAX_ACC_DROP

        if val is None:
            raise BdpruneError(f"{result.method} chooses how many channels to prune from a clean-accuracy budget",
                               hint="pass val= (labelled clean samples), or k= or channels=")
        max_acc_drop = DEFAULT_MAX_ACC_DROP
    if (max_acc_drop is None) != (val is None):
        raise BdpruneError("max_acc_drop and val go together", hint="pass both to choose the amount from a clean-accuracy budget")
    settings = (repair if isinstance(repair, RepairSettings) else RepairSettings(str(repair))).check()
    if (settings.mode == "none") != (repair_data is None):
        raise BdpruneError("repair and repair_data go together", hint="pass repair='unlearn' (or bn, finetune) with labelled clean repair_data")
    out = None if output is None else Path(output)
    inputs = () if source is None else (Path(source),)
    if out is not None:
        from .atomic import check_output_path

        check_output_path(out, inputs=inputs, force=force)  # fail before any work
    dev = _device(model, device)
    check_batch_size(batch_size)
    digest = None
    if out is not None:
        digest = file_sha256(Path(source)) if source is not None else state_sha256(model)
    modes = {m: m.training for m in model.modules()}
    work = model if in_place else _copy(model)
    notes: list[str] = []
    curve, base_acc, extra, used_k = [], None, {}, k
    if max_acc_drop is not None:
        val_set = as_image_set(val, samples=None, seed=0)
        budget = dict(device=dev, batch_size=batch_size, normalize=parse_normalize(normalize))
        amount = choose_amount(work, result, val_set, max_acc_drop, by_k=result.ranking in ("network", "absolute"), budget=budget)
        result, picked, used_k, base_acc, curve = amount.result, amount.channels, amount.k, amount.base_acc, amount.curve
        notes.append(amount.note)
        extra = dict(amount.extra)
    elif channels is not None:
        picked = {str(layer): [int(c) for c in chans] for layer, chans in channels.items() if len(chans)}
    elif k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise BdpruneError(f"k must be a count of channels >= 0, got {k!r}")
        picked = result.top(k)
        extra = {"k": str(k)}
    else:
        result = result.rethreshold(float(u)) if u is not None else result
        picked = result.flagged_channels()
    check_channels(work, picked, result.pruned_params, fill=result.fill, source=result.checkpoint)
    repair_acc = None
    if settings.mode == "none":
        mask_model(work, picked, result.pruned_params, result.fill)
    else:
        clean = as_image_set(repair_data, samples=None, seed=0)
        budget = dict(device=dev, normalize=parse_normalize(normalize))
        repaired, repair_acc, repair_notes, repair_meta = prune_and_repair(work, picked, result.pruned_params, result.fill, clean,
                                                                           settings, budget, seed)
        work.load_state_dict(repaired.state_dict())
        notes += repair_notes
        extra.update(repair_meta)
    for module, training in modes.items():  # a budget's forward passes put the model in eval mode
        module.train(training)
    used_u = None if used_k is not None or channels is not None else result.u
    meta_u = None if used_u is None or not math.isfinite(float(used_u)) else float(used_u)
    if out is not None:
        tensors = {key: value.detach().to("cpu") for key, value in work.state_dict().items()}
        metadata = pruning_metadata(method=result.method, u=meta_u, samples=result.samples, source=None if source is None else Path(source),
                                    channels=picked, params=result.pruned_params, fill=result.fill, extra=extra, source_sha256=digest)
        write_safetensors(tensors, out, metadata, source=inputs[0] if inputs else None, force=force)
    return Pruned(out, result.method, meta_u, picked, result.pruned_params, result.channels_total, curve, base_acc, notes,
                  used_k, result.fill is not None, settings.mode, repair_acc, model=work, max_acc_drop=max_acc_drop)


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
    tensors = {key: value.detach().to("cpu") for key, value in model.state_dict().items()}
    return hashlib.sha256(safetensors_bytes(tensors, {})).hexdigest()


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, checked; by default the device of the model's first parameter or buffer."""
    if device is not None:
        return resolve_device(str(device))
    if not isinstance(model, nn.Module):
        raise BdpruneError(f"model must be a torch.nn.Module, not a {type(model).__name__}", hint="to scan a file, use bdprune.core.scan_checkpoints or the CLI")
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


def _loaded(model: nn.Module, name: str | None, device: torch.device) -> LoadedModel:
    """A copy of ``model`` in eval mode, dressed as a checkpoint named ``name``."""
    if not isinstance(model, nn.Module):
        raise BdpruneError(f"model must be a torch.nn.Module, not a {type(model).__name__}", hint="to scan a file, use the CLI")
    work = _copy(model).eval()
    label = name or f"<{type(model).__name__}>"
    checkpoint = Checkpoint(path=Path(label), tensors=dict(work.state_dict()))
    return LoadedModel(work, checkpoint, f"{type(model).__module__}.{type(model).__qualname__}", None)


def _strings(values: Mapping[str, Any] | None) -> dict[str, str] | None:
    return None if values is None else {str(key): str(value) for key, value in values.items()}
