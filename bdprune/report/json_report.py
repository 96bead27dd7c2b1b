"""``--format json``: the full machine-readable result, every layer and channel."""

from __future__ import annotations

import json
from typing import Sequence

from rich.console import Console

from ..scoring import ScanResult
from . import REPORTERS


def results_to_json(results: Sequence[ScanResult]) -> str:
    """One JSON document: an object for one checkpoint, ``{"results": [...]}`` for several."""
    docs = [r.to_dict() for r in results]
    payload = docs[0] if len(docs) == 1 else {"schema_version": docs[0]["schema_version"], "results": docs}
    return json.dumps(payload, indent=2, allow_nan=False)


@REPORTERS.register("json")
class JsonReporter:
    """Writes :func:`results_to_json` verbatim (no Rich markup or wrapping)."""

    def write(self, results: Sequence[ScanResult], console: Console, *, top: int) -> None:  # noqa: D102
        console.file.write(results_to_json(results) + "\n")
