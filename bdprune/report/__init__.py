"""Report formats for scan results: a small interface, an enum of choices and a registry."""

from __future__ import annotations

from enum import Enum
from typing import Protocol, Sequence

from rich.console import Console

from ..registry import Registry
from ..scoring import ScanFailure, ScanResult


class OutputFormat(str, Enum):
    """The ``--format`` choices."""

    table = "table"
    json = "json"
    sarif = "sarif"
    markdown = "markdown"
    html = "html"
    jsonl = "jsonl"


class Reporter(Protocol):
    """Writes the results of one scan call (one entry per checkpoint) to a console."""

    def write(self, results: Sequence[ScanResult], console: Console, *, top: int, errors: Sequence[ScanFailure] = ()) -> None:
        """Render ``results``, then ``errors`` (the checkpoints that could not be scanned);
        ``top`` bounds how many channels a human-facing format lists."""


REPORTERS: Registry[Reporter] = Registry("output format")

from . import html_report, json_report, jsonl, markdown, sarif, table  # noqa: E402,F401  (registers the formats)
