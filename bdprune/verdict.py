"""The checkpoint-level verdict: the rules that reduce a scan to one statistic and a decision.

Per-layer flags alone cannot gate a build: every layer has a 3-sigma tail, so every model, clean
ones included, has flagged channels. The verdict reduces a scan to one statistic per checkpoint
and compares it with a threshold calibrated on clean and backdoored models (benchmarks/RESULTS.md).

For bnp and bnp+ the statistic is scale-free and divided by its bar, so the checkpoint is
suspicious above 1 (``--fail-threshold`` scales the bar):

* **explained** (the default, needs the model and the clean samples): the class probe (bdprune.probe) looks, for every class, for one perturbation that
  sends the clean samples to it (dense L2 and sparse L1 budgets, growing); for the class each budget
  reaches best, it asks how much of the network's total BN divergence a share of images carrying
  that perturbation explains (1 - min_p KL(mixture || running) / KL(clean || running)). A trigger
  was in the training data, so it explains the running statistics; a clean model's natural weak
  spot does not. The class whose perturbation explains most is the suspected target.
* **kl-ratio** (only where the probe cannot run: ``assess`` without a model, or more than
  PROBE_MAX_CLASSES classes): the largest channel KL over the network's 90th-percentile KL. It is
  always reported as a component, with its bar, but does not decide when the probe ran: on models
  outside the calibration part a clean model passed its bar (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .normalize import Normalization

from .probe import PROBE_MAX_CLASSES
from .scoring import ScanResult, Verdict

MIN_CHANNELS = 8  # layers narrower than this have too few channels for a robust spread


# bnp and bnp+ ("explained|kl-ratio"; bars chosen on the calibration part of the verdict zoo only,
# benchmarks/verdict_zoo.py, and reported on models never used for it: benchmarks/RESULTS.md,
# "Checkpoint-level verdict, scale-free"). The reported statistic is the deciding part divided by
# its bar, so 1.0 is the default threshold and --fail-threshold X scales the bars by X.
# Both parts are scale-free: multiplying every KL by a constant (more samples, larger images,
# another data set's noise floor) changes neither, unlike the raw KL, whose clean values differed
# 10x between architectures and input kinds. Each bar sits above the largest value of any clean
# calibration model (kl-ratio 10.4, explained 0.097) by a margin (1.15x, 1.5x).
KL_RATIO_BAR = 12.0
EXPLAINED_BAR = 0.15
MIN_GAP = 0.1  # a probe candidate counts when its class leads the next by this share of images
TARGET_EXPLAINED = 0.1  # the probe's class is named as the target when its part is at least this
KL_QUANTILE = 0.9

# ep, clp: no statistic separated clean from backdoored models on the first zoo (AUROC <= 0.69), so
#      their bars only catch extreme outliers; prefer bnp for gating.
RULES = {"bnp": ("explained|kl-ratio", 1.0), "bnp+": ("explained|kl-ratio", 1.0), "ep": ("max-robust-z", 200.0), "clp": ("max-robust-z", 10.0)}


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
    if statistic == "explained|kl-ratio":
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
           normalize: Normalization | None = None, device: torch.device | str = "cpu") -> Verdict:
    """The checkpoint's statistic under its method's rule (RULES), and the verdict.

    For bnp and bnp+ the class probe (bdprune.probe.class_probe) runs when ``model`` and the
    clean ``images`` (an ImageSet or a tensor) are given, fed normalized by ``normalize`` (mean
    and std values, as resolved by bdprune.options) on ``device``; without them only the kl-ratio
    part is assessed and a note says so."""
    statistic, default = RULES.get(result.method, ("max-robust-z", 10.0))
    threshold = default if fail_threshold is None else fail_threshold
    if statistic == "explained|kl-ratio":
        return _assess_combined(result, threshold, top, model, images, normalize, device)
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


def probe_statistic(model, images, *, normalize=None, device="cpu") -> dict | None:
    """The probe part of the bnp verdict: the class probe's candidate perturbations (one per budget,
    for the class that budget reaches best), kept where that class leads the next by at least
    MIN_GAP of the images (the perturbation really singles the class out), and how much of the BN
    divergence each explains; the candidate that explains most decides. None when the probe cannot
    run (too many classes)."""
    from .probe import suspect_trigger

    found = suspect_trigger(model, images, min_gap=MIN_GAP, device=device, normalize=normalize)
    if found is None:
        return None
    probe, suspect = found
    if suspect is None:
        return {"value": 0.0, "class": None, "budget": None, "gap": probe.gap}
    return {"value": suspect.explained, "class": suspect.target, "budget": suspect.budget, "gap": suspect.gap}


def _assess_combined(result: ScanResult, threshold: float, top: int, model, images, normalize, device) -> Verdict:
    ratio, channels = kl_ratio(result)
    components = {"kl_ratio": {"value": ratio, "bar": KL_RATIO_BAR * threshold}}
    notes: list[str] = []
    probe = None
    if model is not None and images is not None:
        probe = probe_statistic(model, getattr(images, "images", images), normalize=normalize, device=device)
        if probe is None:
            notes.append(f"class probe skipped (more than {PROBE_MAX_CLASSES} classes): kl-ratio only")
        else:
            components["explained"] = {**probe, "bar": EXPLAINED_BAR * threshold}
    else:
        notes.append("class probe not run (no model or clean images): kl-ratio only")
    # The probe decides when it ran; the kl-ratio decides only without it (no model, too many classes).
    value = probe["value"] / EXPLAINED_BAR if probe is not None else ratio / KL_RATIO_BAR
    suspicious = math.isfinite(value) and value > threshold
    drivers = [{"layer": name, "channel": c, "score": score, "value": v} for v, name, c, score in channels[:top]] if suspicious else []
    target = None
    if suspicious and probe is not None and probe["value"] >= TARGET_EXPLAINED:
        target = probe["class"]
    return Verdict(
        suspicious=suspicious,
        statistic=value,
        threshold=threshold,
        rule=f"{result.method}-explained" if probe is not None else f"{result.method}-kl-ratio",
        drivers=drivers,
        components=components,
        target=target,
        notes=notes,
    )
