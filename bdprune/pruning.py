"""The prune pipeline: choose the channels, prune them (and repair), and record what was done.

One pipeline serves ``bdprune prune`` (:func:`prune_checkpoint`, a file in and a file out),
:func:`bdprune.prune_model` (a model in memory) and the demo: the rules on the options
(:func:`budget_rules`), the choice of channels (:func:`choose_channels`: a scan's flags, another
u, the top k, a reviewed list, or a clean-accuracy budget), pruning with the optional repair
(:func:`prune_and_repair`) and the file's metadata (:func:`outcome_metadata`).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from torch import nn

from .class_probe import MIN_GAP, PROBE_MAX_CLASSES, class_probe, persistence
from .data import ImageSet
from .errors import BdpruneError
from .options import Resolved, ScanSettings, check_samples
from .prune import Fill, channels_from_report, check_channels, default_output, mask_model, masked_tensors, model_tensors, \
    pruning_metadata, write_safetensors
from .purify import PURIFIERS
from .repair_stop import HeldBack, split_held_back
from .repair import FINE_TUNES, PERSISTENCE_BAR, RepairSettings, clean_accuracy, find_triggers, purify, repair_model
from .scan import check_input, load_samples, load_with, output_classes, scan_loaded, score_model
from .scoring import ScanResult
from .tune import CurvePoint, choose_k, choose_u

FLAGS = {"max_acc_drop": "--max-acc-drop", "val": "--val", "repair": "--repair", "data": "--data"}
PARAMETERS = {name: name for name in FLAGS}


@dataclass
class PruneOutcome:
    """What ``prune`` did: where it wrote, which channels, how the amount was chosen, and the
    repair (if any) with the clean-sample accuracy before pruning, after pruning and after repair."""

    output: Path | None
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


@dataclass
class Choice:
    """The channels to prune and how they were chosen: ``u`` is the threshold that flagged them
    (None when a count k or a list chose them), ``extra`` what the file records about it."""

    channels: dict[str, list[int]]
    params: tuple[str, ...]
    fill: Fill | None
    u: float | None
    k: int | None = None
    base_acc: float | None = None
    curve: list[CurvePoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)


def budget_rules(ranking: str | None, max_acc_drop: float | None, has_val: bool, *, names: Mapping[str, str] = FLAGS) -> tuple[float | None, bool]:
    """The budget as the ranking needs it: bnp+ ("network") always uses one (default 1 point) and,
    like anp/rnp ("absolute") under a budget, chooses a count k of top-ranked channels; the
    per-layer methods choose u, and their budget needs held-out validation data. Returns
    (max_acc_drop, by_k). ``names`` words the errors as the caller wrote the options."""
    from .methods.bnp_plus import DEFAULT_MAX_ACC_DROP

    if ranking == "network" and max_acc_drop is None:
        max_acc_drop = DEFAULT_MAX_ACC_DROP
    by_k = ranking == "network" or (ranking == "absolute" and max_acc_drop is not None)
    if not by_k and (max_acc_drop is None) != (not has_val):
        raise BdpruneError(f"{names['max_acc_drop']} and {names['val']} go together",
                           hint="pass both to choose the amount from a clean-accuracy budget")
    return max_acc_drop, by_k


def choose_channels(model: nn.Module, result: ScanResult, resolved: Resolved, *, u: float | None = None, k: int | None = None,
                    channels: Mapping[str, Sequence[int]] | None = None, max_acc_drop: float | None = None,
                    val: ImageSet | None = None, by_k: bool = False) -> Choice:
    """What to prune, at most one of: a clean-accuracy budget on ``val`` (u, or k when ``by_k``),
    a reviewed list ``channels``, the ``k`` most suspicious channels, or the scan's flags re-drawn
    at ``u`` (the scan's own flags when all are None)."""
    params, fill = result.pruned_params, result.fill
    if max_acc_drop is not None:
        budget = dict(device=resolved.device, batch_size=resolved.batch_size, normalize=resolved.normalize)
        if by_k:
            chosen, base_acc, curve = choose_k(model, result, val, max_acc_drop, **budget)
            note = (f"chose k={chosen}: the top-ranked channels before ACC on {Path(val.source).name} first fell more than "
                    f"{max_acc_drop:g} points")
            return Choice(result.top(chosen), params, fill, None, chosen, base_acc, curve, [note],
                          {"k": str(chosen), "max_acc_drop": repr(float(max_acc_drop))})
        chosen_u, base_acc, curve = choose_u(model, result, val, max_acc_drop, **budget)
        note = f"chose u={chosen_u:g}: the smallest on the grid with validation ACC within {max_acc_drop:g} points"
        return Choice(result.rethreshold(chosen_u).flagged_channels(), params, fill, _finite(chosen_u), None, base_acc, curve, [note])
    if channels is not None:
        return Choice({str(layer): [int(c) for c in chans] for layer, chans in channels.items() if len(chans)}, params, fill, None)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise BdpruneError(f"k must be a count of channels >= 0, got {k!r}")
        return Choice(result.top(k), params, fill, None, k, extra={"k": str(k)})
    flagged = result.rethreshold(float(u)) if u is not None else result
    return Choice(flagged.flagged_channels(), params, fill, _finite(flagged.u))


def prune_and_repair(model: nn.Module, choice: Choice, repair: RepairSettings, clean: ImageSet | None, resolved: Resolved, *,
                     show_progress: bool = False, verdict=None) -> tuple[nn.Module, tuple[float, float, float] | None, list[str], dict[str, str]]:
    """Prune ``choice`` (checked by :func:`bdprune.prune.check_channels`) in ``model`` itself; with a
    repair, repair a copy on the labelled ``clean`` samples. Returns the pruned (and repaired)
    model, the clean samples' ACC (original, pruned, repaired) or None, notes (what ``unlearn``
    found, the ACC) and what the file records. ``verdict`` (the scan's) names the classes
    ``unlearn`` removes where the per-class probe cannot try every class."""
    if repair.mode == "none":
        mask_model(model, choice.channels, choice.params, choice.fill)
        return model, None, [], {}
    if clean.labels is None:
        raise BdpruneError(f"--repair {repair.mode} trains on labelled clean samples, and this data has no labels", path=clean.source)
    dev, norm = resolved.device, resolved.normalize
    before = clean_accuracy(model, clean, device=dev, normalize=norm)
    trains = repair.mode in FINE_TUNES or repair.mode in PURIFIERS
    meta = {"repair": repair.mode, "repair_epochs": str(repair.epochs) if trains else "", "repair_samples": str(len(clean))}
    if trains:
        meta["repair_lr"] = f"{repair.lr:g}"
    triggers, notes = None, []
    if trains:
        notes += _few_samples_note(model, clean, repair)
    if repair.mode == "unlearn":  # on the model as it came: pruning takes away the divergence the trigger explains
        found, note = find_triggers(model, clean, device=dev, normalize=norm, verdict=verdict)
        notes.append(note)
        if found is not None:
            triggers = found.perturbations
            meta.update(found.metadata())
    train, held_back, teacher = _fine_tune_extras(model, clean, repair, resolved, meta)
    mask_model(model, choice.channels, choice.params, choice.fill)
    pruned = clean_accuracy(model, clean, device=dev, normalize=norm)
    if repair.mode in PURIFIERS:
        repaired, report = purify(model, choice.channels, choice.params, choice.fill, clean, repair, device=dev, normalize=norm,
                                  seed=resolved.seed, show_progress=show_progress)
        notes += report.notes
        meta.update(report.metadata)
    else:
        repaired = repair_model(model, choice.channels, choice.params, choice.fill, train, repair, device=dev, normalize=norm,
                                seed=resolved.seed, triggers=triggers, show_progress=show_progress, held_back=held_back, notes=notes,
                                teacher=teacher)
    acc = (before, pruned, clean_accuracy(repaired, clean, device=dev, normalize=norm))
    notes.append(f"--repair {repair.mode} on {len(clean)} clean samples: their ACC {acc[0]:.2f}% -> {acc[1]:.2f}% pruned "
                 f"-> {acc[2]:.2f}% repaired")
    residual_note, residual_meta = residual_trigger(repaired, clean, resolved, repair.mode)
    notes.append(residual_note)
    meta.update(residual_meta)
    return repaired, acc, notes, meta


def _fine_tune_extras(model: nn.Module, clean: ImageSet, repair: RepairSettings, resolved: Resolved,
                      meta: dict[str, str]) -> tuple[ImageSet, HeldBack | None, nn.Module | None]:
    """For finetune / unlearn, from the model before pruning: the samples to train on and those held
    back (``--repair-holdout``), and the teacher (``--repair-distill``); recorded in ``meta``."""
    if repair.mode not in FINE_TUNES:
        return clean, None, None
    meta["repair_refit_bn"] = "yes" if repair.refit_bn else "no"
    teacher = None
    if repair.distill > 0:
        teacher = copy.deepcopy(model)
        meta["repair_distill"] = f"{repair.distill:g}"
    if repair.holdout <= 0:
        return clean, None, teacher
    train, held = split_held_back(clean, repair.holdout, resolved.seed)
    meta["repair_holdout"] = f"{repair.holdout:g}"
    return train, HeldBack(held, clean_accuracy(model, held, device=resolved.device, normalize=resolved.normalize)), teacher


# Below this many labelled samples per class the fine-tune overfits them: on the 1,000-class zoo
# (0.5 per class) it cost clean models 16-18 points of ACC at the defaults (15-24 before the BN
# refit), on a 100-class one (5 per class) 3.7 (benchmarks/RESULTS.md); the 10-class tests and
# demo have 30-50 per class.
MIN_SAMPLES_PER_CLASS = 10


def _few_samples_note(model: nn.Module, clean: ImageSet, repair: RepairSettings) -> list[str]:
    """A warning when the fine-tune has fewer than MIN_SAMPLES_PER_CLASS labelled samples per class."""
    classes = output_classes(model)
    if not classes or len(clean) >= MIN_SAMPLES_PER_CLASS * classes:
        return []
    return [f"warning: --repair {repair.mode} fine-tunes on {len(clean)} clean samples for {classes} classes "
            f"({len(clean) / classes:.1f} per class): so few are overfitted and accuracy drops (zoo: 3.7 points at 100 classes, 16-18 at 1,000); "
            f"pass at least {MIN_SAMPLES_PER_CLASS * classes} (--samples, --val), or a smaller --repair-lr, and check ACC with bdprune eval"]


def residual_trigger(model: nn.Module, clean: ImageSet, resolved: Resolved, mode: str) -> tuple[str, dict[str, str]]:
    """Whether a trigger can still be synthesized in the repaired model, as a note and the file's
    ``residual_*`` metadata: the per-class probe of ``unlearn`` (bdprune.class_probe) run again, and
    the persistence of its most persistent class (its leads over the next class, summed over the
    budgets where it leads by MIN_GAP) against the bar ``unlearn`` acts on. The verdict's own probe
    cannot do this: every repair re-estimates the BN running statistics on clean data, which takes
    away the divergence it matches. A check after the fact, not a proof: a purified model can still
    re-learn its backdoor from a few poisoned samples. Above PROBE_MAX_CLASSES it does not run:
    probing only the unlearned classes, each alone, said "a trigger can still be synthesized" for
    all three 1,000-class zoo models whose ASR unlearning had taken to 0% (benchmarks/RESULTS.md)."""
    probe = class_probe(model, clean.images, device=resolved.device, normalize=resolved.normalize)
    if probe is None:
        return f"after --repair {mode} no residual check: the per-class probe does not run on this many classes", {}
    lead = persistence(probe, MIN_GAP)
    cls = max(range(len(lead)), key=lead.__getitem__)
    found = lead[cls] >= PERSISTENCE_BAR
    meta = {"residual_class": str(cls), "residual_persistence": f"{lead[cls]:.4f}", "residual_trigger": "yes" if found else "no"}
    verdict = "a trigger can still be synthesized" if found else f"no class reaches the bar {PERSISTENCE_BAR:g}"
    return f"after --repair {mode} the per-class probe's most persistent class is {cls} ({lead[cls]:.2f}): {verdict}", meta


def outcome_metadata(outcome: PruneOutcome, samples: int, source: Path | None, fill: Fill | None, extra: Mapping[str, str], *,
                     source_sha256: str | None = None) -> dict[str, str]:
    """The safetensors metadata of a pruned file: bdprune's version, method, u, samples, the input's
    SHA-256, the pruned channels (and biases), and ``extra`` (k, budget, repair, method settings)."""
    return pruning_metadata(method=outcome.method, u=outcome.u, samples=samples, source=source, channels=outcome.channels,
                            params=outcome.params, fill=fill, extra=extra, source_sha256=source_sha256)


def prune_checkpoint(
    checkpoint: str | Path,
    settings: ScanSettings,
    *,
    data: str | Path | None = None,
    samples: int = 500,
    output: str | Path | None = None,
    force: bool = False,
    channels_report: str | Path | None = None,
    max_acc_drop: float | None = None,
    val: str | Path | None = None,
    repair: RepairSettings | None = None,
    show_progress: bool = True,
    image_size: object = None,
) -> PruneOutcome:
    """``bdprune prune``: prune the channels a scan with ``settings`` flags (or ``channels_report``
    lists) and write ``output`` as safetensors (default ``<stem>.pruned.safetensors``).

    ``max_acc_drop`` chooses the amount from a clean-accuracy budget on ``val`` (u for the
    per-layer methods; k for bnp+, which always uses a budget, and for anp/rnp, which measure on
    ``data`` unless ``val`` is given). ``repair`` then recovers the pruned model on the clean
    samples (``val`` if given, else ``data``), keeping pruned channels pruned. ``image_size``
    (``--image-size``) resizes every data set read."""
    from .atomic import check_output_path

    checkpoint = Path(checkpoint)
    out = Path(output) if output is not None else default_output(checkpoint)
    repair = (repair or RepairSettings()).check()
    resolved = settings.resolve(has_data=data is not None)
    max_acc_drop, by_k, val = _check_request(None if channels_report is not None else resolved.method, data, val, max_acc_drop,
                                             channels_report, repair)
    repair_data = val if val is not None else data
    check_samples(samples, settings.seed)
    check_output_path(out, inputs=tuple(Path(p) for p in (checkpoint, data, val, channels_report) if p is not None), force=force)
    loaded = load_with(settings, checkpoint)
    read = lambda path, n: check_input(loaded, load_samples(path, n, settings.seed, image_size=image_size))  # noqa: E731
    images = read(data, samples) if data is not None else None
    if channels_report is not None:
        choice, samples_used, total, method_name = _reported_choice(Path(channels_report), checkpoint, settings.method)
        extra: dict[str, str] = {}
    else:
        # above the per-class probe's limit, unlearn takes its classes from the verdict, so the scan gives one
        needs_verdict = repair.mode == "unlearn" and (loaded.num_classes or 0) > PROBE_MAX_CLASSES
        result = (scan_loaded if needs_verdict else score_model)(loaded, images, resolved, show_progress=show_progress)
        val_set = None
        if max_acc_drop is not None:  # bnp+, anp, rnp measure on the scanned samples themselves unless --val is given
            val_set = images if by_k and val == data else read(val, None)
        choice = choose_channels(loaded.model, result, resolved, max_acc_drop=max_acc_drop, by_k=by_k, val=val_set)
        choice.notes[:0] = result.notes
        samples_used, total, method_name = result.samples, result.channels_total, result.method
        extra = {"method_args": json.dumps(dict(settings.method_args), sort_keys=True)} if settings.method_args else {}
    check_channels(loaded.model, choice.channels, choice.params, fill=choice.fill, source=channels_report)
    clean = None
    if repair.mode != "none":
        clean = images if repair_data == data else read(repair_data, None)
    model, repair_acc, repair_notes, repair_meta = prune_and_repair(loaded.model, choice, repair, clean, resolved, show_progress=show_progress,
                                                                    verdict=None if channels_report is not None else result.verdict)
    tensors = masked_tensors(loaded.checkpoint, choice.channels, choice.params, choice.fill) if repair.mode == "none" \
        else model_tensors(loaded.checkpoint, model)
    outcome = PruneOutcome(out, method_name, choice.u, choice.channels, choice.params, total, choice.curve, choice.base_acc,
                           choice.notes + repair_notes, choice.k, choice.fill is not None, repair.mode, repair_acc)
    metadata = outcome_metadata(outcome, samples_used, checkpoint, choice.fill, {**choice.extra, **extra, **repair_meta})
    write_safetensors(tensors, out, metadata, source=checkpoint, force=force)
    return outcome


def _check_request(method, data, val, max_acc_drop, channels_report, repair: RepairSettings):
    """Refuse option combinations that cannot work; returns the budget, whether it chooses k, and
    the data it measures on (bnp+, anp and rnp measure on --data unless --val is given)."""
    max_acc_drop, by_k = budget_rules(None if method is None else method.ranking, max_acc_drop, val is not None)
    if by_k and val is None:
        val = data
    if channels_report is not None and max_acc_drop is not None:
        raise BdpruneError("--channels prunes a fixed list; it cannot be combined with --max-acc-drop")
    repair_data = val if val is not None else data
    if repair.mode != "none" and (repair_data is None or (method is not None and method.data_role == "training" and val is None)):
        raise BdpruneError(f"--repair {repair.mode} needs labelled clean samples", hint="pass them with --val (or --data for bnp, anp, rnp)")
    return max_acc_drop, by_k, val


def _reported_choice(report: Path, checkpoint: Path, method: str | None) -> tuple[Choice, int, int, str]:
    """The channels a ``scan --format json`` report lists, with its method's pruned parameters."""
    from .methods import METHODS

    channels, entry = channels_from_report(report, checkpoint)
    name = str(entry.get("method") or method or "")
    try:
        params = tuple(entry.get("pruned_params") or METHODS.get(name).pruned_params)
    except BdpruneError as exc:  # the report names no (known) method and --method is not given
        raise exc.with_path(report) from None
    note = f"pruning the {sum(map(len, channels.values()))} channels listed in {report}"
    choice = Choice(channels, params, entry.get("fill"), _finite(entry.get("u")), notes=[note])
    return choice, int(entry.get("samples") or 0), int(entry.get("channels_total") or 0), name


def _finite(u: float | None) -> float | None:
    """u as the file records it: None where there is none or it is infinite (nothing flagged)."""
    return None if u is None or not math.isfinite(float(u)) else float(u)
