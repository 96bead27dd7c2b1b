"""The checkpoint-level verdict, and the one place that turns scan results into an exit code.

Per-layer flags alone cannot gate a build: every layer has a 3-sigma tail, so every model, clean
ones included, has flagged channels. The verdict reduces a scan to one statistic per checkpoint
and compares it with a threshold calibrated on clean and backdoored models (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from .scoring import ScanResult

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
MIN_CHANNELS = 8  # layers narrower than this have too few channels for a robust spread


@dataclass
class Verdict:
    """``suspicious`` when ``statistic`` exceeds ``threshold``; ``drivers`` are the channels behind it."""

    suspicious: bool
    statistic: float
    threshold: float
    rule: str
    drivers: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``suspicious`` or ``clean``."""
        return "suspicious" if self.suspicious else "clean"


# Calibrated on the benchmark zoo (benchmarks/RESULTS.md, "Checkpoint-level verdict"): each
# threshold sits just above the largest value any clean model showed, so clean models pass.
# bnp: the largest raw KL of any channel. In a clean model the clean data's statistics match the
#      running ones everywhere; a backdoor leaves channels whose running statistics were pulled
#      by triggered samples. This absolute divergence separated best (AUROC 0.96 on the zoo);
#      per-layer or robust z-scores did not (0.81-0.90), since every layer has a relative tail.
# bnp+: the same KL scores as bnp, so the same rule.
# ep, clp: no statistic separated clean from backdoored models on the zoo (AUROC <= 0.69), so
#      their bars only catch extreme outliers; prefer bnp for gating.
RULES = {"bnp": ("max-kl", 0.075), "bnp+": ("max-kl", 0.075), "ep": ("max-robust-z", 200.0), "clp": ("max-robust-z", 10.0)}


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


def channel_statistics(result: ScanResult, statistic: str) -> list[tuple[float, str, int, float]]:
    """(value, layer, channel, raw score) of every channel under ``statistic``, largest first."""
    channels = []
    for layer in result.layers:
        if statistic == "max-kl":
            values = list(layer.scores)
        else:
            values = robust_z(layer.scores, result.low_is_suspicious)
        channels += [(v, layer.name, c, layer.scores[c]) for c, v in enumerate(values)]
    channels.sort(key=lambda t: -t[0])
    return channels


def assess(result: ScanResult, fail_threshold: float | None = None, *, top: int = 5) -> Verdict:
    """The checkpoint's statistic under its method's rule (RULES), and the verdict."""
    statistic, default = RULES.get(result.method, ("max-robust-z", 10.0))
    threshold = default if fail_threshold is None else fail_threshold
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


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """0 when every checkpoint's verdict is clean, 1 when any is suspicious."""
    return EXIT_FINDINGS if any(v.suspicious for v in verdicts) else EXIT_CLEAN
