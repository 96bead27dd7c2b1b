"""Shared fixtures: a small BatchNorm CNN with data-derived ("trained-ish") BN statistics, saved
as a checkpoint, and a few clean images to scan it with.

The model is bdprune's built-in ``smallcnn`` at ``width=8`` (BN layers of 8, 16, 32 channels
and a 32-feature BatchNorm1d) on 1x8x8 images, so every forward pass costs microseconds.
``smallcnn`` does not infer ``width`` from a checkpoint: pass ``--arch-arg width=8``
(``SavedModel.cli_args`` holds the right flags).

The slow reference implementations of the three scores live in ``tests/_slow_reference.py``
(``from _slow_reference import ...``; this file puts ``tests/`` on ``sys.path`` for that, whatever
pytest's import mode). ``one_torch_thread`` runs a module with one torch thread.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bdprune.archs.smallcnn import smallcnn

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from _images import TINY_SHAPE, make_images  # noqa: E402  (tests/ is on sys.path from here on)

TINY_WIDTH = 8


def make_trained_ish_model(seed: int = 0, width: int = TINY_WIDTH) -> nn.Module:
    """A ``smallcnn`` whose BN running statistics are the cumulative averages of real
    forward passes (as training would leave them) and whose BN affine parameters are random
    (not the all-ones/all-zeros of a fresh init). Deterministic for a given ``seed``; every
    call returns a new model the caller may modify."""
    model = smallcnn(num_classes=10, in_channels=TINY_SHAPE[0], width=width)
    model.load_state_dict(_trained_ish_state(seed, width))
    return model.eval()


@functools.lru_cache(maxsize=8)
def _trained_ish_state(seed: int, width: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the global RNG
        torch.manual_seed(seed)
        model = smallcnn(num_classes=10, in_channels=TINY_SHAPE[0], width=width)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=g))
            bn.momentum = None  # cumulative moving average over the passes below
        model.train()
        for _ in range(4):
            model(torch.rand(32, *TINY_SHAPE, generator=g))
    for bn in bns:
        bn.momentum = 0.1
    return {k: v.clone() for k, v in model.state_dict().items()}


@dataclass
class SavedModel:
    """A model and the checkpoint file holding its state_dict."""

    path: Path
    model: nn.Module
    arch: str
    arch_args: dict[str, str]

    @property
    def cli_args(self) -> list[str]:
        """``--arch``/``--arch-arg`` flags that rebuild this model on the command line."""
        out = ["--arch", self.arch]
        for key, value in self.arch_args.items():
            out += ["--arch-arg", f"{key}={value}"]
        return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch CPU thread for a whole test module, restored afterwards. On a small machine
    shared with other jobs, two threads fighting over two busy cores make tiny ops several
    times slower. Opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_bn_model():
    """Factory: ``make_bn_model(seed=0, width=8)`` -> a fresh trained-ish ``smallcnn``."""
    return make_trained_ish_model


@pytest.fixture
def bn_model() -> nn.Module:
    """A trained-ish ``smallcnn`` (width 8, 1x8x8 inputs) in eval mode."""
    return make_trained_ish_model()


@pytest.fixture
def bn_checkpoint(tmp_path: Path, bn_model: nn.Module) -> SavedModel:
    """``bn_model``'s plain state_dict saved with ``torch.save`` as ``tmp_path/tiny.pt``."""
    path = tmp_path / "tiny.pt"
    torch.save(bn_model.state_dict(), path)
    return SavedModel(path, bn_model, "smallcnn", {"width": str(TINY_WIDTH)})


@pytest.fixture
def clean_images() -> torch.Tensor:
    """64 random 1x8x8 float32 images in [0, 1] (what ``bn_model`` eats)."""
    return make_images(64)


@pytest.fixture
def images_npz(tmp_path: Path, clean_images: torch.Tensor) -> Path:
    """``clean_images`` (with labels) as an ``.npz`` file that ``--data`` reads."""
    path = tmp_path / "images.npz"
    labels = np.arange(len(clean_images), dtype=np.int64) % 10
    np.savez(path, images=clean_images.numpy(), labels=labels)
    return path
