"""The one place that turns scan results into an exit code."""

from __future__ import annotations

from typing import Sequence

from .scoring import ScanResult

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def exit_code(results: Sequence[ScanResult]) -> int:
    """0 when no checkpoint has a flagged channel, 1 when any has."""
    return EXIT_FINDINGS if any(r.flagged_total for r in results) else EXIT_CLEAN
