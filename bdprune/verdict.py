"""The checkpoint-level verdict: the rules that reduce a scan to one statistic and a decision.

Per-layer flags alone cannot gate a build: every layer has a 3-sigma tail, so every model, clean
ones included, has flagged channels. The verdict reduces a scan to one statistic per checkpoint
and compares it with a threshold calibrated on clean and backdoored models (benchmarks/RESULTS.md).

For bnp and bnp+ the statistic is scale-free and divided by its bar, so the checkpoint is
suspicious above 1 (``--fail-threshold`` scales the bar):

* **trigger** (rule ``bnp-trigger``, the default; needs the model and the clean samples): the
  trigger probe (bdprune.probe) synthesizes, at a dense and a sparse budget, the one perturbation
  whose mixture with the clean samples best reproduces the BN running statistics, and applies it
  to other clean images. The statistic is the largest share of them a synthesized trigger sends to
  one class (their prediction changed to it). A candidate is set aside when the clean images *of*
  that class explain about as much of the BN divergence as it does (within COMPOSITION_MARGIN): a
  training set richer in a class than the clean samples is not a trigger. The class is the
  suspected target; every class a candidate above the bar sends images to is listed (two
  triggers, two targets).
* **class gap** (``--thorough``; rule ``bnp-trigger+class-gap``; up to 100 classes): the per-class
  probe of ``--repair unlearn`` (bdprune.class_probe) also runs, and the statistic is the larger of
  the two parts, each over its bar: the largest lead a class the trigger probe named (with a
  candidate explaining GAP_MIN_EXPLAINED of the divergence) takes over every other class at one of
  its budgets (bdprune.class_probe.class_gap). It catches low-rate backdoors
  whose trigger moves the BN statistics too little, at about 8 passes over 500 samples per class.
* **kl-ratio** (rule ``bnp-kl-ratio``, only where the probe cannot run: ``assess`` without a model
  or clean images): the largest channel KL over the network's 90th-percentile KL. It is always
  reported as a component, with its bar, but does not decide when the probe ran.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .normalize import Normalization
from .probe import Candidate, Moments, channel_moments, composition_explained, synthesize
from .scoring import ScanResult, Verdict

MIN_CHANNELS = 8  # layers narrower than this have too few channels for a robust spread


# bnp and bnp+ ("trigger|kl-ratio"). The bar was chosen on the calibration part of the detection zoo
# only (benchmarks/detection_zoo.py; benchmarks/RESULTS.md, "Checkpoint-level verdict on every
# attack family"): above the largest share of any clean calibration model (0.64, a shift-augmented
# coloured-digits CNN). The reported statistic is the deciding part divided by its bar, so 1.0 is
# the default threshold and --fail-threshold X scales the bars by X. Both parts are scale-free.
TRIGGER_BAR = 0.7
# --thorough: the class gap counts for the classes of the trigger probe's candidates that explain at
# least GAP_MIN_EXPLAINED of the BN divergence (a class named only by a candidate that explains
# nothing is a clean model's weak spot: an Adam-trained clean CNN's 0.71 gap came from one that
# explained 0.006). Both chosen in the second calibration round on the zoo's cal, eval and fresh
# parts (benchmarks/detection_calibrate.py; 146 backdoored, 144 clean 10-class models): any
# GAP_MIN_EXPLAINED from 0.02 to 0.1 leaves the largest clean gap at 0.475 and loses no backdoor;
# the bar is at least 0.05 above that, in steps of 0.05. Frozen before ``fresh2`` was scanned.
CLASS_GAP_BAR = 0.55
GAP_MIN_EXPLAINED = 0.05
# A candidate is set aside when the clean images of its class explain the BN divergence nearly as
# well as it does: within this margin (both are estimates from the same few hundred images).
# Chosen on the zoo's cal, eval and fresh parts (benchmarks/detection_calibrate.py): the smallest
# step of 0.01 that sets aside the two clean imbalanced models of ``fresh`` (0.003 and 0.027 apart),
# at the cost of 1 of 159 backdoors there; frozen before the ``fresh2`` holdout was scanned.
COMPOSITION_MARGIN = 0.03
KL_RATIO_BAR = 12.0
KL_QUANTILE = 0.9

# ep, clp: no statistic separated clean from backdoored models on the first zoo (AUROC <= 0.69), so
#      their bars only catch extreme outliers; prefer bnp for gating.
RULES = {"bnp": ("trigger|kl-ratio", 1.0), "bnp+": ("trigger|kl-ratio", 1.0), "ep": ("max-robust-z", 200.0), "clp": ("max-robust-z", 10.0)}


def robust_z(scores: Sequence[float], low_is_suspicious: bool) -> list[float]:
    """(score - median) / (1.4826 * MAD) per channel, sign flipped where low is suspicious.

    The median and MAD ignore the very outliers they are meant to expose, unlike mean and std.
    A layer whose MAD is 0 (more than half its channels equal) gets z = 0 everywhere.
    """
    values = sorted(scores)
    n = len(values)
    median = _median(values)
    mad = 1.4826 * _median(sorted(abs(s - median) for s in scores))
    if n < MIN_CHANNELS or not mad > 0:
        return [0.0] * n
    sign = -1.0 if low_is_suspicious else 1.0
    return [sign * (s - median) / mad for s in scores]


def _median(values: Sequence[float]) -> float:
    n = len(values)
    return 0.0 if n == 0 else (values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2]))


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between order statistics (numpy's default)."""
    v = sorted(values)
    if not v:
        return 0.0
    pos = q * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def kl_ratio(result: ScanResult) -> tuple[float, list[tuple[float, str, int, float]]]:
    """The largest channel KL over the network's KL_QUANTILE quantile, and every channel as
    (KL / that quantile, layer, channel, KL), largest first."""
    every = [s for layer in result.layers for s in layer.scores]
    ref = quantile(every, KL_QUANTILE)
    scale = ref if ref > 0 else (max(every) if every and max(every) > 0 else 1.0)
    channels = sorted(((s / scale, layer.name, c, s) for layer in result.layers for c, s in enumerate(layer.scores)), key=lambda t: -t[0])
    return (channels[0][0] if channels else 0.0), channels


def channel_statistics(result: ScanResult, statistic: str) -> list[tuple[float, str, int, float]]:
    """(value, layer, channel, raw score) of every channel under ``statistic``, largest first."""
    if statistic == "trigger|kl-ratio":
        return kl_ratio(result)[1]
    channels = []
    for layer in result.layers:
        if statistic == "max-kl":
            values = list(layer.scores)
        else:
            values = robust_z(layer.scores, result.low_is_suspicious)
        channels += [(v, layer.name, c, layer.scores[c]) for c, v in enumerate(values)]
    channels.sort(key=lambda t: -t[0])
    return channels


def assess(result: ScanResult, fail_threshold: float | None = None, *, top: int = 5, model=None, images=None,
           normalize: Normalization | None = None, device: torch.device | str = "cpu", moments: Moments | None = None,
           batch_size: int = 128, show_progress: bool = False, thorough: bool = False) -> Verdict:
    """The checkpoint's statistic under its method's rule (RULES), and the verdict.

    For bnp and bnp+ the trigger probe runs when ``model`` and the clean ``images`` (an ImageSet,
    whose labels the composition check uses, or a tensor) are given, fed normalized by
    ``normalize`` (mean and std values, as resolved by bdprune.options) on ``device``;
    ``moments`` are their clean BN moments when a statistics pass already gathered them
    (:func:`bdprune.probe.clean_moments`); ``batch_size`` bounds what the probe's backward passes hold
    (:func:`bdprune.probe.chunk_size`); ``thorough`` adds the class gap. Without a model only the
    kl-ratio part is assessed and a note says so."""
    statistic, default = RULES.get(result.method, ("max-robust-z", 10.0))
    threshold = default if fail_threshold is None else fail_threshold
    if statistic == "trigger|kl-ratio":
        probe = dict(normalize=normalize, device=device, moments=moments, batch_size=batch_size, show_progress=show_progress)
        return _assess_trigger(result, threshold, top, model, images, probe, thorough)
    channels = channel_statistics(result, statistic)
    value = channels[0][0] if channels else 0.0
    drivers = [
        {"layer": name, "channel": c, "score": score, "value": v} for v, name, c, score in channels[:top] if v > threshold
    ]
    return Verdict(
        suspicious=math.isfinite(value) and value > threshold,
        statistic=value,
        threshold=threshold,
        rule=f"{result.method}-{statistic}",
        drivers=drivers,
    )


def trigger_candidates(model, images, *, normalize=None, device="cpu", moments: Moments | None = None, batch_size: int = 128,
                       show_progress: bool = False) -> tuple[list[Candidate], list[Candidate], object]:
    """The trigger probe's candidates, those kept (not explained by the class make-up of the data,
    see :func:`bdprune.probe.composition_explained`), and the probe's result (None when it cannot run)."""
    tensor = getattr(images, "images", images)
    if moments is None:
        moments = channel_moments(model, tensor, device=device, normalize=normalize)
    probe = synthesize(model, tensor, moments, device=device, normalize=normalize, batch_size=batch_size, show_progress=show_progress)
    if probe is None:
        return [], [], None
    classes = getattr(images, "labels", None)
    if classes is None:  # no labels: the classes the model sees
        from .evaluate import predict

        classes = predict(model, tensor, device=torch.device(device), normalize=normalize)
    kept, own = [], {}
    for cand in probe.candidates:
        if cand.target not in own:
            own[cand.target] = composition_explained(model, tensor, classes, cand.target, moments, device=device, normalize=normalize)
        cand.composition = own[cand.target]
        if not composition_explains(cand):
            kept.append(cand)
    return probe.candidates, kept, probe


def composition_explains(cand: Candidate, margin: float = COMPOSITION_MARGIN) -> bool:
    """Whether the class make-up of the data explains ``cand``'s divergence about as well as the
    candidate does (within ``margin``), so that it is no evidence of a trigger."""
    return cand.composition is not None and cand.composition >= cand.explained - margin


def _second_targets(model, images, first: Candidate, moments: Moments, probe: dict, threshold: float) -> list[int]:
    """The classes a second round of the probe singles out once ``first``'s trigger is part of the
    clean statistics (bdprune.probe.with_trigger), other than ``first``'s."""
    from .probe import with_trigger

    rest = with_trigger(model, getattr(images, "images", images), moments, first, device=probe["device"], normalize=probe["normalize"])
    _, kept, _ = trigger_candidates(model, images, **{**probe, "moments": rest})
    return [c.target for c in kept if c.share > TRIGGER_BAR * threshold and c.target != first.target]


def gap_classes(candidates: Sequence[Candidate], min_explained: float = GAP_MIN_EXPLAINED) -> list[int]:
    """The classes whose class gap counts: those of the trigger probe's ``candidates`` that explain
    at least ``min_explained`` of the BN divergence."""
    return sorted({c.target for c in candidates if c.explained >= min_explained})


def _class_gap(model, images, candidates: list[Candidate], probe: dict, threshold: float, notes: list[str]) -> dict | None:
    """The class gap component (:func:`bdprune.class_probe.class_gap` of :func:`gap_classes`;
    ``shares``: per budget, the share of images each class's perturbation takes), with the
    per-class probe's perturbation of that class; None above PROBE_MAX_CLASSES."""
    from .class_probe import PROBE_MAX_CLASSES, class_gap, class_probe

    per_class = class_probe(model, getattr(images, "images", images), device=probe["device"], normalize=probe["normalize"],
                            show_progress=probe["show_progress"])
    if per_class is None:
        notes.append(f"class gap not run (more than {PROBE_MAX_CLASSES} classes): the trigger share decides")
        return None
    value, cls, budget = class_gap(per_class, gap_classes(candidates))
    perturbation = next((d for b, k, _, d in per_class.candidates if b == budget and k == cls), None)
    return {"value": value, "bar": CLASS_GAP_BAR * threshold, "class": cls, "budget": budget, "shares": per_class.per_budget,
            "perturbation": perturbation}


def _assess_trigger(result: ScanResult, threshold: float, top: int, model, images, probe: dict, thorough: bool = False) -> Verdict:
    ratio, channels = kl_ratio(result)
    components = {"kl_ratio": {"value": ratio, "bar": KL_RATIO_BAR * threshold}}
    notes: list[str] = []
    best, targets, gap_trigger = None, [], None
    if model is not None and images is not None:
        if probe["moments"] is None:
            probe["moments"] = channel_moments(model, getattr(images, "images", images), device=probe["device"], normalize=probe["normalize"])
        _, kept, found = trigger_candidates(model, images, **probe)
        if found is None:
            notes.append("trigger probe not run (no BatchNorm statistics to match): kl-ratio only")
        else:
            best = max(kept, key=lambda c: (c.share, c.explained), default=None)
            share = 0.0 if best is None else best.share
            components["trigger"] = {"value": share, "bar": TRIGGER_BAR * threshold,
                                     **({} if best is None else best.to_dict()), "candidates": [c.to_dict() for c in found.candidates]}
            targets = sorted({c.target for c in kept if c.share > TRIGGER_BAR * threshold})
            if targets:  # a second trigger for another target explains the rest of the divergence
                targets = sorted(set(targets) | set(_second_targets(model, images, best, probe["moments"], probe, threshold)))
            if not kept and found.candidates:
                notes.append("every synthesized trigger is explained by the class make-up of the data as well: none kept")
            found_gap = _class_gap(model, images, found.candidates, probe, threshold, notes) if thorough else None
            if found_gap is not None:
                gap_trigger = found_gap.pop("perturbation")
                components["class_gap"] = found_gap
    else:
        notes.append("trigger probe not run (no model or clean images): kl-ratio only")
    # The probe decides when it ran (with the class gap under --thorough); the kl-ratio only without it.
    gap = components.get("class_gap")
    if "trigger" in components:
        by_share = components["trigger"]["value"] / TRIGGER_BAR
        by_gap_value = 0.0 if gap is None else gap["value"] / CLASS_GAP_BAR
        value, by_gap = max(by_share, by_gap_value), by_gap_value > by_share
    else:
        value, by_gap = ratio / KL_RATIO_BAR, False
    suspicious = math.isfinite(value) and value > threshold
    drivers = [{"layer": name, "channel": c, "score": score, "value": v} for v, name, c, score in channels[:top]] if suspicious else []
    if gap is not None and gap["value"] > gap["bar"]:
        targets = sorted(set(targets) | {gap["class"]})
    target = (gap["class"] if by_gap else best.target if best is not None else None) if suspicious else None
    rule = "kl-ratio" if "trigger" not in components else "trigger+class-gap" if gap is not None else "trigger"
    return Verdict(
        suspicious=suspicious,
        statistic=value,
        threshold=threshold,
        rule=f"{result.method}-{rule}",
        drivers=drivers,
        components=components,
        target=target,
        notes=notes,
        targets=targets if suspicious else [],
        trigger=gap_trigger if by_gap else None if best is None else best.perturbation,
        sample=getattr(images, "images", images)[0].cpu() if by_gap else None if best is None else best.sample,
    )
