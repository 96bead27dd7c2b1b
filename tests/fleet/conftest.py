"""Fixtures of the fleet tests; the helpers are in tests/_fleet.py."""

from __future__ import annotations

import pytest

from _fleet import KILL_HOOK, Fleet, make_fleet


@pytest.fixture
def fleet(tmp_path, monkeypatch, make_bn_model) -> Fleet:
    """Three good checkpoints (a.pt, b.safetensors, c.pt) and 48 labelled images; runs in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return make_fleet(tmp_path, make_bn_model)


@pytest.fixture(scope="session")
def kill_hook(tmp_path_factory) -> str:
    """A folder holding KILL_HOOK as sitecustomize.py, to put on a child process's PYTHONPATH."""
    folder = tmp_path_factory.mktemp("kill_hook")
    (folder / "sitecustomize.py").write_text(KILL_HOOK)
    return str(folder)
