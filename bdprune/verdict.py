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


# Calibrated thresholds per method (see benchmarks/RESULTS.md, "Checkpoint-level verdict").
DEFAULT_THRESHOLDS = {"bnp": 12.0, "ep": 12.0, "clp": 12.0}


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


def assess(result: ScanResult, fail_threshold: float | None = None, *, top: int = 5) -> Verdict:
    """The checkpoint's statistic: the largest robust z of any channel in any layer."""
    threshold = DEFAULT_THRESHOLDS.get(result.method, 12.0) if fail_threshold is None else fail_threshold
    channels = []
    for layer in result.layers:
        for c, z in enumerate(robust_z(layer.scores, result.low_is_suspicious)):
            channels.append((z, layer.name, c, layer.scores[c]))
    channels.sort(key=lambda t: -t[0])
    statistic = channels[0][0] if channels else 0.0
    drivers = [
        {"layer": name, "channel": c, "score": score, "robust_z": z}
        for z, name, c, score in channels[:top]
        if z > threshold
    ]
    return Verdict(
        suspicious=math.isfinite(statistic) and statistic > threshold,
        statistic=statistic,
        threshold=threshold,
        rule=f"{result.method}-max-robust-z",
        drivers=drivers,
    )


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """0 when every checkpoint's verdict is clean, 1 when any is suspicious."""
    return EXIT_FINDINGS if any(v.suspicious for v in verdicts) else EXIT_CLEAN
