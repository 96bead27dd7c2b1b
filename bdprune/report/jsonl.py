"""``--format jsonl``: JSON Lines, one compact row per checkpoint, for streaming and resuming.

A row is the checkpoint's ``--format json`` document with the file's ``sha256`` after
``checkpoint``; a checkpoint that could not be scanned is ``{"schema_version", "checkpoint",
"sha256", "error"}``. ``bdprune scan --format jsonl`` writes each row as its checkpoint finishes
(completion order, see bdprune.fleet); this reporter writes a finished list in the order given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from rich.console import Console

from ..checkpoint import file_sha256
from ..scoring import ScanFailure, ScanResult
from .base import REPORTERS, Reporter


def jsonl_row(outcome: ScanResult | ScanFailure, sha256: str | None) -> str:
    """One row (no line break) for a scanned checkpoint or a failure; ``sha256`` is the file's."""
    doc = outcome.to_dict()
    head = {"schema_version": doc.pop("schema_version"), "checkpoint": doc.pop("checkpoint"), "sha256": doc.pop("sha256", None) or sha256}
    return json.dumps({**head, **doc}, allow_nan=False, separators=(",", ":"))


def _digest(path: str) -> str | None:
    return file_sha256(path) if Path(path).is_file() else None


@REPORTERS.register("jsonl")
class JsonlReporter(Reporter):
    """Writes one :func:`jsonl_row` per result, then one per error."""

    def write(self, results: Sequence[ScanResult], console: Console, *, top: int, errors: Sequence[ScanFailure] = ()) -> None:  # noqa: D102
        for result in results:
            console.file.write(jsonl_row(result, _digest(result.checkpoint)) + "\n")
        for failure in errors:
            console.file.write(jsonl_row(failure, failure.sha256) + "\n")
