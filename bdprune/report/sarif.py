"""``--format sarif``: SARIF 2.1.0 for GitHub code scanning (upload-sarif).

One ``BDP001`` error per checkpoint whose verdict is suspicious, and one ``BDP002`` warning per
channel driving that verdict. A clean checkpoint produces no results. Every result points at
the checkpoint file (line 1) and carries a stable ``partialFingerprints`` hash of rule, layer
and channel, so code scanning tracks the same finding across runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from rich.console import Console

from .._version import __version__
from ..scoring import ScanFailure, ScanResult
from .base import REPORTERS, Reporter

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
RULES = [
    {
        "id": "BDP001",
        "name": "SuspiciousCheckpoint",
        "shortDescription": {"text": "Checkpoint looks backdoored"},
        "fullDescription": {
            "text": "The checkpoint-level statistic computed from BatchNorm channel scores exceeds the calibrated threshold."
        },
        "help": {"text": "Do not ship this checkpoint. Review the channels listed, prune them with `bdprune prune`, and re-evaluate."},
        "defaultConfiguration": {"level": "error"},
    },
    {
        "id": "BDP002",
        "name": "SuspiciousChannel",
        "shortDescription": {"text": "BatchNorm channel drives the backdoor verdict"},
        "fullDescription": {"text": "One of the BatchNorm channels with the largest divergence behind the checkpoint's suspicious verdict."},
        "help": {"text": "Candidates for pruning: `bdprune prune --channels REPORT.json` prunes a reviewed list."},
        "defaultConfiguration": {"level": "warning"},
    },
]


def _uri(path: str) -> str:
    """Repository-relative when the file is under the working directory (what code scanning
    expects), else an absolute file URI."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_uri()


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _result(rule_index: int, level: str, text: str, uri: str, fingerprint: str, properties: dict) -> dict:
    return {
        "ruleId": RULES[rule_index]["id"],
        "ruleIndex": rule_index,
        "level": level,
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": 1}}}],
        "partialFingerprints": {"bdpruneFinding/v1": fingerprint},
        "properties": properties,
    }


def sarif_document(results: Sequence[ScanResult], errors: Sequence[ScanFailure] = ()) -> dict:
    """The SARIF log for a scan of one or more checkpoints; checkpoints that could not be scanned
    become error notifications of an unsuccessful invocation."""
    findings = []
    for result in results:
        verdict = result.verdict
        if verdict is None or not verdict.suspicious:
            continue
        uri = _uri(result.checkpoint)
        target = verdict.target
        said = f"; {verdict.target_text()}" if target is not None else ""
        findings.append(
            _result(
                0,
                "error",
                f"{result.checkpoint}: {result.method} verdict suspicious by rule {verdict.rule} (statistic {verdict.statistic:.2f} > "
                f"threshold {verdict.threshold:g}){said}",
                uri,
                _fingerprint("BDP001", result.method),
                {"method": result.method, "statistic": verdict.statistic, "threshold": verdict.threshold, "rule": verdict.rule,
                 "target": target, "targets": verdict.targets, "components": verdict.components,
                 "channels": [{"layer": d["layer"], "channel": d["channel"]} for d in verdict.drivers]},
            )
        )
        for d in verdict.drivers:
            findings.append(
                _result(
                    1,
                    "warning",
                    f"{d['layer']} channel {d['channel']}: {result.method} score {d['score']:.4g} ({verdict.rule} {d['value']:.4g})",
                    uri,
                    _fingerprint("BDP002", result.method, d["layer"], d["channel"]),
                    dict(d),
                )
            )
    run: dict = {
        "tool": {
            "driver": {
                "name": "bdprune",
                "version": __version__,
                "informationUri": "https://pypi.org/project/bdprune/",
                "rules": RULES,
            }
        },
        "results": findings,
    }
    if errors:
        notes = [{"level": "error", "message": {"text": e.error},
                  "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(e.checkpoint)}}}]} for e in errors]
        run["invocations"] = [{"executionSuccessful": False, "toolExecutionNotifications": notes}]
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


@REPORTERS.register("sarif")
class SarifReporter(Reporter):
    """Writes :func:`sarif_document` as JSON."""

    def write(self, results: Sequence[ScanResult], console: Console, *, top: int, errors: Sequence[ScanFailure] = ()) -> None:  # noqa: D102
        console.file.write(json.dumps(sarif_document(results, errors), indent=2) + "\n")
