"""Test helpers for the scan and prune steps: score a loaded model with settings given by name, and
read back what a pruned file records."""

from __future__ import annotations

import json
from pathlib import Path

from bdprune.options import ScanSettings
from bdprune.scan import score_model


def score(loaded, method=None, *, data=None, show_progress=False, **settings):
    """``score_model`` with its settings as keywords (``u``, ``device``, ``seed``, ...)."""
    resolved = ScanSettings(method=method, **settings).resolve(has_data=data is not None)
    return score_model(loaded, data, resolved, show_progress=show_progress)


def read_pruned_channels(path: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """The pruned channels and the whole metadata of a file written by bdprune."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("pruned_channels", "{}")), meta
