"""The library entry points behind ``scan``, ``prune`` and ``eval``, with plain arguments.

>>> from bdprune.core import scan_checkpoints
>>> [result] = scan_checkpoints(["model.pt"], "resnet18", data="clean.npz")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .errors import BdpruneError
from .evaluate import EvalResult, evaluate_model
from .data import ImageSet, parse_normalize
from .prune import (
    channels_from_report,
    check_channels,
    default_output,
    mask_model,
    masked_tensors,
    model_tensors,
    pruning_metadata,
    write_safetensors,
)
from .repair import RepairSettings, clean_accuracy, find_triggers, repair_model
from .scan import LoadedModel, check_batch_size, check_samples, check_u, load_model, load_samples, resolve_device, score_model
from .scoring import ScanResult
from .tune import CurvePoint, choose_k, choose_u


def check_options(*, u: float | None, samples: int, seed: int, batch_size: int, device: str) -> None:
    """Refuse bad option values up front, before any file is read (each would fail later anyway)."""
    if u is not None:
        check_u(u)
    check_samples(samples, seed)
    check_batch_size(batch_size)
    resolve_device(device)


def scan_checkpoints(
    checkpoints: Sequence[str | Path],
    arch: str,
    *,
    method: str | None = None,
    data: str | Path | None = None,
    u: float | None = None,
    samples: int = 500,
    seed: int = 0,
    normalize: str = "none",
    device: str = "auto",
    batch_size: int = 128,
    num_classes: int | None = None,
    arch_args: Mapping[str, str] | None = None,
    trust_pickle: bool = False,
    show_progress: bool = True,
    fail_threshold: float | None = None,
    method_args: Mapping[str, str] | None = None,
) -> list[ScanResult]:
    """Scan each checkpoint with the same method, data and threshold, each with its verdict.
    ``u=None`` takes the method's default (3 standard deviations; a mask of 0.2 for anp/rnp)."""
    check_options(u=u, samples=samples, seed=seed, batch_size=batch_size, device=device)
    images = load_samples(data, samples, seed) if data is not None else None
    results = []
    for path in expand_checkpoints(checkpoints):
        loaded = load_model(path, arch, num_classes=num_classes, arch_args=arch_args, trust_pickle=trust_pickle)
        results.append(
            scan_loaded(
                loaded, images, method=method, u=u, seed=seed, normalize=normalize, device=device, batch_size=batch_size,
                show_progress=show_progress, fail_threshold=fail_threshold, method_args=method_args,
            )
        )
    return results


def scan_loaded(
    loaded: LoadedModel,
    images: ImageSet | None,
    *,
    method: str | None = None,
    u: float | None = None,
    seed: int = 0,
    normalize: str = "none",
    device: str = "auto",
    batch_size: int = 128,
    show_progress: bool = True,
    fail_threshold: float | None = None,
    method_args: Mapping[str, str] | None = None,
) -> ScanResult:
    """Score one loaded model on samples already drawn and give it its verdict: the step
    :func:`scan_checkpoints` runs for each file and :func:`bdprune.scan_model` for an in-memory model."""
    from .verdict import assess

    result = score_model(
        loaded, method, data=images, u=u, device=device, batch_size=batch_size, normalize=normalize,
        show_progress=show_progress, seed=seed, method_args=method_args,
    )
    result.verdict = assess(result, fail_threshold, model=loaded.model, images=images, normalize=normalize, device=device)
    return result


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def expand_checkpoints(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a directory becomes its checkpoint files (by suffix), sorted."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
            if not found:
                raise BdpruneError("holds no checkpoint files", path=path, hint=f"expected files ending in {', '.join(CHECKPOINT_SUFFIXES)}")
            out += found
        else:
            out.append(path)
    if not out:
        raise BdpruneError("no checkpoint given", hint="pass one or more checkpoint files or directories")
    return out


@dataclass
class PruneOutcome:
    """What ``prune`` did: where it wrote, which channels, how the amount was chosen, and the
    repair (if any) with the clean-sample accuracy before pruning, after pruning and after repair."""

    output: Path
    method: str
    u: float | None
    channels: dict[str, list[int]]
    params: tuple[str, ...]
    channels_total: int
    curve: list[CurvePoint] = field(default_factory=list)
    base_acc: float | None = None
    notes: list[str] = field(default_factory=list)
    k: int | None = None  # bnp+ (or --max-acc-drop with anp/rnp): how many top-ranked channels the budget allowed
    filled: bool = False  # pruned biases were set to the clean mean output (bnp+), not zeroed
    repair: str = "none"
    repair_acc: tuple[float, float, float] | None = None  # clean-sample ACC: original, pruned, repaired


def prune_checkpoint(
    checkpoint: str | Path,
    arch: str,
    *,
    method: str | None = None,
    data: str | Path | None = None,
    u: float | None = None,
    output: str | Path | None = None,
    force: bool = False,
    channels_report: str | Path | None = None,
    max_acc_drop: float | None = None,
    val: str | Path | None = None,
    samples: int = 500,
    seed: int = 0,
    normalize: str = "none",
    device: str = "auto",
    batch_size: int = 128,
    num_classes: int | None = None,
    arch_args: Mapping[str, str] | None = None,
    trust_pickle: bool = False,
    show_progress: bool = True,
    method_args: Mapping[str, str] | None = None,
    repair: RepairSettings | None = None,
) -> PruneOutcome:
    """Prune the channels a scan flags (or a report lists) and write ``output`` as safetensors.

    With ``max_acc_drop`` the amount is chosen from a clean-accuracy budget on ``val``: u for the
    per-layer methods, the number of top-ranked channels for bnp+ (which always uses a budget,
    default ``DEFAULT_MAX_ACC_DROP``) and for anp/rnp; those three measure on ``data`` itself
    unless ``val`` is given. ``repair`` (``bn`` or ``finetune``) then recovers the pruned model on
    the clean samples (``val`` if given, else ``data``), keeping pruned channels pruned."""
    from .atomic import check_output_path
    from .scan import choose_method

    checkpoint = Path(checkpoint)
    out = Path(output) if output is not None else default_output(checkpoint)
    repair = (repair or RepairSettings()).check()
    method_cls = None if channels_report is not None else choose_method(method, data is not None)[0]
    ranking = method_cls.ranking if method_cls is not None else None
    if ranking == "network":  # bnp+: the prune count always comes from a budget
        from .methods.bnp_plus import DEFAULT_MAX_ACC_DROP

        max_acc_drop = DEFAULT_MAX_ACC_DROP if max_acc_drop is None else max_acc_drop
    by_k = ranking == "network" or (ranking == "absolute" and max_acc_drop is not None)
    if by_k:
        val = data if val is None else val
    elif (max_acc_drop is None) != (val is None):
        raise BdpruneError("--max-acc-drop and --val go together", hint="pass both to choose u from a clean-accuracy budget")
    if channels_report is not None and max_acc_drop is not None:
        raise BdpruneError("--channels prunes a fixed list; it cannot be combined with --max-acc-drop")
    repair_data = val if val is not None else data
    if repair.mode != "none" and (repair_data is None or (method_cls is not None and method_cls.data_role == "training" and val is None)):
        raise BdpruneError(f"--repair {repair.mode} needs labelled clean samples", hint="pass them with --val (or --data for bnp, anp, rnp)")
    check_options(u=u, samples=samples, seed=seed, batch_size=batch_size, device=device)
    inputs = tuple(Path(p) for p in (checkpoint, data, val, channels_report) if p is not None)
    check_output_path(out, inputs=inputs, force=force)  # fail before any expensive work
    loaded = load_model(checkpoint, arch, num_classes=num_classes, arch_args=arch_args, trust_pickle=trust_pickle)
    notes: list[str] = []
    curve: list[CurvePoint] = []
    base_acc = None
    extra: dict[str, str] = {}
    k = None
    images = load_samples(data, samples, seed) if data is not None else None
    budget = dict(device=resolve_device(device), batch_size=batch_size, normalize=parse_normalize(normalize))
    if channels_report is not None:
        from .methods import METHODS

        channels, entry = channels_from_report(Path(channels_report), checkpoint)
        method_name = str(entry.get("method") or method or "")
        try:
            params = tuple(entry.get("pruned_params") or METHODS.get(method_name).pruned_params)
        except BdpruneError as exc:  # the report names no (known) method and --method is not given
            raise exc.with_path(channels_report) from None
        fill = entry.get("fill")
        used_u, used_samples, total = entry.get("u"), int(entry.get("samples") or 0), int(entry.get("channels_total") or 0)
        notes.append(f"pruning the {sum(map(len, channels.values()))} channels listed in {channels_report}")
    else:
        result = score_model(
            loaded, method, data=images, u=u, device=device, batch_size=batch_size, normalize=normalize,
            show_progress=show_progress, seed=seed, method_args=method_args,
        )
        notes += result.notes
        channels = result.flagged_channels()
        if max_acc_drop is not None:
            val_set = images if by_k and val == data else load_samples(val, None, seed)
            amount = choose_amount(loaded.model, result, val_set, max_acc_drop, by_k=by_k, budget=budget)
            result, channels, k, base_acc, curve = amount.result, amount.channels, amount.k, amount.base_acc, amount.curve
            notes.append(amount.note)
            extra = dict(amount.extra)
        method_name, params, fill = result.method, result.pruned_params, result.fill
        # a k chosen from the budget replaces u: the file records k, not the scan's u
        used_u = None if k is not None else result.u
        used_samples, total = result.samples, result.channels_total
        if method_args:
            extra["method_args"] = json.dumps(dict(method_args), sort_keys=True)
    check_channels(loaded.model, channels, params, fill=fill, source=channels_report)
    repair_acc = None
    if repair.mode == "none":
        tensors = masked_tensors(loaded.checkpoint, channels, params, fill)
    else:
        clean = images if repair_data == data else load_samples(repair_data, None, seed)
        model, acc, repair_notes, repair_meta = prune_and_repair(loaded.model, channels, params, fill, clean, repair, budget, seed,
                                                                 show_progress=show_progress)
        tensors = model_tensors(loaded.checkpoint, model)
        repair_acc = acc
        extra.update(repair_meta)
        notes += repair_notes
        notes.append(f"--repair {repair.mode} on {len(clean)} clean samples: their ACC {acc[0]:.2f}% -> {acc[1]:.2f}% pruned "
                     f"-> {acc[2]:.2f}% repaired")
    meta_u = None if used_u is None or not math.isfinite(float(used_u)) else float(used_u)
    metadata = pruning_metadata(
        method=method_name, u=meta_u, samples=used_samples, source=checkpoint, channels=channels, params=params, fill=fill, extra=extra
    )
    write_safetensors(tensors, out, metadata, source=checkpoint, force=force)
    return PruneOutcome(out, method_name, meta_u, channels, params, total, curve, base_acc, notes, k, fill is not None,
                        repair.mode, repair_acc)


@dataclass
class Amount:
    """How much a clean-accuracy budget lets ``prune`` remove: the (re-thresholded) scan, the
    channels, k (top-ranked count; None when u was chosen), the curve and what to record."""

    result: ScanResult
    channels: dict[str, list[int]]
    k: int | None
    base_acc: float
    curve: list[CurvePoint]
    note: str
    extra: dict[str, str]


def choose_amount(model, result: ScanResult, val: ImageSet, max_acc_drop: float, *, by_k: bool, budget: dict) -> Amount:
    """Choose k (``by_k``: bnp+, anp, rnp) or u from ``max_acc_drop`` points of ACC on ``val``;
    shared by ``prune`` and :func:`bdprune.prune_model`. ``budget`` holds device, batch_size, normalize."""
    if by_k:
        k, base_acc, curve = choose_k(model, result, val, max_acc_drop, **budget)
        note = f"chose k={k}: the top-ranked channels before ACC on {Path(val.source).name} first fell more than {max_acc_drop:g} points"
        return Amount(result, result.top(k), k, base_acc, curve, note, {"k": str(k), "max_acc_drop": repr(float(max_acc_drop))})
    chosen_u, base_acc, curve = choose_u(model, result, val, max_acc_drop, **budget)
    note = f"chose u={chosen_u:g}: the smallest on the grid with validation ACC within {max_acc_drop:g} points"
    result = result.rethreshold(chosen_u)
    return Amount(result, result.flagged_channels(), None, base_acc, curve, note, {})


def prune_and_repair(model, channels, params, fill, clean, repair: RepairSettings, budget: dict, seed: int, *,
                     show_progress: bool = False):
    """Prune ``model`` in place, repair a copy; return the copy, the clean samples' ACC (original,
    pruned, repaired), notes (what ``unlearn`` found) and the metadata the file records.
    Shared by ``prune --repair`` and :func:`bdprune.prune_model`; ``budget`` holds device and normalize."""
    if clean.labels is None:
        raise BdpruneError(f"--repair {repair.mode} trains on labelled clean samples, and this data has no labels", path=clean.source)
    dev, norm = budget["device"], budget["normalize"]
    before = clean_accuracy(model, clean, device=dev, normalize=norm)
    trains = repair.mode in ("finetune", "unlearn")
    meta = {"repair": repair.mode, "repair_epochs": str(repair.epochs) if trains else "", "repair_samples": str(len(clean))}
    triggers, notes = None, []
    if repair.mode == "unlearn":  # on the model as it came: pruning takes away the divergence the trigger explains
        found, note = find_triggers(model, clean, device=dev, normalize=norm)
        notes.append(note)
        if found is not None:
            triggers = found.perturbations
            meta.update(found.metadata())
    mask_model(model, channels, params, fill)
    pruned = clean_accuracy(model, clean, device=dev, normalize=norm)
    repaired = repair_model(model, channels, params, fill, clean, repair, device=dev, normalize=norm, seed=seed, triggers=triggers,
                            show_progress=show_progress)
    return repaired, (before, pruned, clean_accuracy(repaired, clean, device=dev, normalize=norm)), notes, meta


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
) -> list[EvalResult]:
    """ACC (and ASR with a trigger or a poisoned set) of each checkpoint on the same data."""
    from .data import check_fits, load_images
    from .triggers import parse_trigger

    if trigger is not None and poisoned is not None:
        raise BdpruneError("pass --trigger or --poisoned, not both")
    if (trigger is not None or poisoned is not None) and target is None:
        raise BdpruneError("ASR needs --target, the attack's target label")
    check_batch_size(batch_size)
    trig = parse_trigger(trigger) if trigger is not None else None
    dev, norm = resolve_device(device), parse_normalize(normalize)
    clean = load_images(data)
    poisoned_set = load_images(poisoned) if poisoned is not None else None
    results = []
    for path in checkpoints:
        loaded = load_model(path, arch, num_classes=num_classes, arch_args=arch_args, trust_pickle=trust_pickle)
        check_fits(clean, loaded.in_channels, loaded.num_classes)
        if target is not None and loaded.num_classes is not None and not 0 <= target < loaded.num_classes:
            raise BdpruneError(f"--target {target} is not a class of this model (0..{loaded.num_classes - 1})")
        results.append(
            evaluate_model(
                loaded.model, clean, checkpoint=str(path), target=target, trigger=trig, poisoned=poisoned_set,
                device=dev, batch_size=batch_size, normalize=norm,
            )
        )
    return results
