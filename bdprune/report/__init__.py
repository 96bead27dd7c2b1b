"""Scan report formats (``--format``): one :class:`~bdprune.report.base.Reporter` plug-in per format,
registered by name in :data:`REPORTERS`: table, json, jsonl, markdown, sarif and html."""

from __future__ import annotations

from .base import REPORTERS, Reporter
from . import html_report, json_report, jsonl, markdown, sarif, table  # noqa: E402,F401  (registers the formats)

__all__ = ["REPORTERS", "Reporter"]
