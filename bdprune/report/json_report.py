"""``--format json``: the full machine-readable result, every layer and channel."""

from __future__ import annotations

import json
from typing import Sequence

from rich.console import Console

from ..scoring import SCHEMA_VERSION, ScanFailure, ScanResult
from .base import REPORTERS, Reporter


def results_to_json(results: Sequence[ScanResult], errors: Sequence[ScanFailure] = ()) -> str:
    """One JSON document: an object for one checkpoint, ``{"results": [...]}`` for several, with
    ``"errors": [{"checkpoint", "sha256", "error"}, ...]`` when some could not be scanned."""
    docs = [r.to_dict() for r in results]
    if len(docs) == 1 and not errors:
        payload = docs[0]
    else:
        payload = {"schema_version": SCHEMA_VERSION, "results": docs}
        if errors:
            payload["errors"] = [{k: v for k, v in e.to_dict().items() if k != "schema_version"} for e in errors]
    return json.dumps(payload, indent=2, allow_nan=False)


@REPORTERS.register("json")
class JsonReporter(Reporter):
    """Writes :func:`results_to_json` verbatim (no Rich markup or wrapping)."""

    def write(self, results: Sequence[ScanResult], console: Console, *, top: int, errors: Sequence[ScanFailure] = ()) -> None:  # noqa: D102
        console.file.write(results_to_json(results, errors) + "\n")
