"""Helpers of the fleet tests (tests/fleet/): a directory of tiny ``smallcnn`` checkpoints, a
worker-killing start-up hook, and ``bdprune scan`` run in-process (CliRunner keeps stdout and
stderr apart). Importable as ``from _fleet import ...``; the fixtures are in tests/fleet/conftest.py."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from _images import make_images
from bdprune.cli import app

ARGS = ["--arch", "smallcnn", "--arch-arg", "width=8", "--samples", "32"]  # tests/conftest.py's tiny model

# Imported at start-up by every Python process whose PYTHONPATH holds its folder (sitecustomize):
# a process that loads a safetensors file named kill-me* SIGKILLs itself there, as the OOM killer
# would. It lives in the test's temporary folder, never in bdprune.
KILL_HOOK = '''
import os, signal
import safetensors.torch as _st

_load_file = _st.load_file


def load_file(filename, *args, **kwargs):
    if os.path.basename(str(filename)).startswith("kill-me"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _load_file(filename, *args, **kwargs)


_st.load_file = load_file
'''


@dataclass
class Fleet:
    """``root/models`` holds the checkpoints (sorted names = the scan order); ``data`` the images."""

    root: Path
    models: Path
    data: Path
    make_model: Callable[..., torch.nn.Module]

    def add(self, name: str, seed: int) -> Path:
        """Save another trained-ish model as ``models/name`` (.pt or .safetensors)."""
        state = self.make_model(seed=seed).state_dict()
        path = self.models / name
        if path.suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(state, path)
        return path


def make_fleet(root: Path, make_model) -> Fleet:
    """Three good checkpoints (a.pt, b.safetensors, c.pt) in ``root/models`` and 48 labelled images."""
    models = root / "models"
    models.mkdir()
    np.savez(root / "data.npz", images=make_images(48).numpy(), labels=np.arange(48) % 10)
    out = Fleet(root, models, root / "data.npz", make_model)
    for seed, name in enumerate(["a.pt", "b.safetensors", "c.pt"]):
        out.add(name, seed)
    return out


def with_pythonpath(*folders: str) -> str:
    """PYTHONPATH with ``folders`` first, then what it held already."""
    return os.pathsep.join([*folders, *filter(None, [os.environ.get("PYTHONPATH")])])


def scan(*args):
    """``bdprune scan ARGS`` in-process; the Click result (exit_code, stdout, stderr)."""
    result = CliRunner().invoke(app, ["scan", *map(str, args)])
    assert "Traceback" not in result.stderr, result.stderr
    return result


def jsonl_rows(text: str) -> list[dict]:
    """Every line parsed on its own (a JSON Lines report)."""
    return [json.loads(line) for line in text.splitlines()]
