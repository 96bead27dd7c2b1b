"""Fixtures for the hostile-input suite (issue 6).

The contract every test here checks: a bad input gives exactly one ``error: ...`` line on stderr
naming the file (where there is one) and what to do, exit code 2, no traceback, nothing from the
input executed, no input file changed and no output (not even a temporary file) left behind.

Everything runs in a fresh working directory (``tmp_path``), so a ``[tool.bdprune]`` table in
some parent ``pyproject.toml`` cannot change the defaults under test, and the "nothing left
behind" check can compare the whole directory before and after.

The model is the built-in ``smallcnn`` at width 4 on 1x8x8 images (BN layers of 4, 8, 16 and
16 channels): every CLI call costs a few milliseconds of compute.
"""

from __future__ import annotations

import hashlib
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from typer.testing import CliRunner

from bdprune.archs.smallcnn import smallcnn
from bdprune.cli import app

WIDTH = 4
SHAPE = (1, 8, 8)
ARCH = ["--arch", "smallcnn", "--arch-arg", f"width={WIDTH}"]

# User architectures for ``--arch nets.py:FACTORY``: no BatchNorm, untracked BN statistics, a
# one-channel BN layer, and a plain conv->BN net (for running_var edits).
NETS_PY = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes=10, c1=4, bn=True, track=True):
            super().__init__()
            self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(c1, track_running_stats=track) if bn else nn.Identity()
            self.conv2 = nn.Conv2d(c1, 6, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(6, track_running_stats=track) if bn else nn.Identity()
            self.fc = nn.Linear(6, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            return self.fc(x.mean((2, 3)))


    def plain(num_classes=10):
        return Net(num_classes)


    def nobn(num_classes=10):
        return Net(num_classes, bn=False)


    def untracked(num_classes=10):
        return Net(num_classes, track=False)


    def onechannel(num_classes=10):
        return Net(num_classes, c1=1)
    '''
)


def make_model(seed: int = 0) -> nn.Module:
    """A ``smallcnn`` (width 4) with random, data-derived BN statistics; deterministic."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = smallcnn(num_classes=10, in_channels=1, width=WIDTH)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, _BatchNorm)):
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
        model.train()
        model(torch.rand(16, *SHAPE, generator=g))
    return model.eval()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden temporaries included) -> sha256 of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Files:
    """The good inputs each test starts from, all in the working directory."""

    root: Path
    checkpoint: Path  # smallcnn width 4, torch.save(state_dict)
    safetensors: Path  # the same weights as safetensors
    data: Path  # 24 labelled 1x8x8 images
    nets: Path  # nets.py with the user architectures above
    model: nn.Module


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares two cores with other work
    yield
    torch.set_num_threads(before)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    """A good checkpoint (.pt and .safetensors), good data and nets.py in ``tmp_path``."""
    from safetensors.torch import save_file

    model = make_model()
    state = model.state_dict()
    torch.save(state, tmp_path / "model.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=rng.random((24, *SHAPE), dtype=np.float32), labels=np.arange(24) % 10)
    (tmp_path / "nets.py").write_text(NETS_PY)
    return Files(tmp_path, tmp_path / "model.pt", tmp_path / "model.safetensors", tmp_path / "data.npz", tmp_path / "nets.py", model)


@dataclass
class Outcome:
    """What one CLI run printed and returned."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def error(self) -> str:
        """The one error line (asserts there is exactly one)."""
        lines = self.error_lines
        assert len(lines) == 1, f"expected one error line, got:\n{self.stderr}"
        return lines[0]


@pytest.fixture
def cli() -> Callable[..., Outcome]:
    """``cli("scan", "model.pt", ...)`` -> :class:`Outcome` (in-process, via CliRunner)."""
    runner = CliRunner()

    def invoke(*args: object) -> Outcome:
        result = runner.invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"the CLI raised {result.exception!r}") from result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr)

    return invoke


@pytest.fixture
def expect_error(cli, tmp_path: Path) -> Callable[..., str]:
    """``expect_error(*args, names="file.pt")`` runs the CLI, asserts the whole contract for a
    bad input and returns the error line:

    exit code 2; exactly one ``error:`` line, which names ``names`` (each, if a tuple) and is
    the last line on stderr; no traceback anywhere; stdout empty; every file in the working
    directory byte-identical afterwards and no file added (no output, no temporary).
    """

    def run(*args: object, names: str | tuple[str, ...] = (), code: int = 2) -> str:
        before = tree_digest(tmp_path)
        out = cli(*args)
        after = tree_digest(tmp_path)
        assert out.exit_code == code, f"exit {out.exit_code}, stderr:\n{out.stderr}\nstdout:\n{out.stdout}"
        line = out.error
        assert out.stderr.rstrip("\n").splitlines()[-1] == line, out.stderr
        assert "Traceback" not in out.stderr + out.stdout
        assert out.stdout == "", out.stdout
        for name in (names,) if isinstance(names, str) else names:
            assert name in line, f"{name!r} not named in: {line}"
        assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"
        return line

    return run


@pytest.fixture
def main_cli(capsys, monkeypatch) -> Callable[..., tuple[int, str, str]]:
    """``main_cli(*args)`` -> (exit code, stdout, stderr) of the real console-script entry
    point ``bdprune.cli.main``, which also turns click's usage errors into one line."""
    import sys

    from bdprune.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bdprune", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return int(exited.value.code or 0), captured.out, captured.err

    return run
