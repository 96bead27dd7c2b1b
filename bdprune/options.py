"""A scan's settings as the user gives them, and the one place they are checked and resolved.

:class:`ScanSettings` holds plain values (strings for device and normalize, names for the method),
so it pickles to a fleet's worker processes and Ray tasks unchanged. :meth:`ScanSettings.resolve`
turns it into :class:`Resolved` (a torch device, normalization values, the method class and its
parsed ``--method-arg`` settings, the threshold) and refuses every bad value with one line; every
command calls it before any file is read, and a worker calls it again where it runs (``auto``
picks that machine's GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import BdpruneError
from .methods import METHODS, Method
from .normalize import Normalization, parse_normalize

ARCH_HINT = "pass --arch NAME (`bdprune archs` lists them) or set arch in [tool.bdprune]"


@dataclass(frozen=True)
class ScanSettings:
    """Everything that decides how a checkpoint is scanned, besides the checkpoint and the data.

    ``arch`` is needed to load a file (not for a model already in memory); ``method=None`` takes
    bnp when there is data and clp without; ``u=None`` the method's threshold; ``fail_threshold``
    scales the verdict's bar."""

    arch: str | None = None
    method: str | None = None
    u: float | None = None
    seed: int = 0
    normalize: str = "none"
    device: str = "auto"
    batch_size: int = 128
    num_classes: int | None = None
    arch_args: Mapping[str, str] | None = None
    trust_pickle: bool = False
    fail_threshold: float | None = None
    method_args: Mapping[str, str] | None = None
    strip_prefix: str | None = None  # the key prefix of the model's weights, where detection cannot decide
    thorough: bool = False  # the verdict adds the per-class probe's class gap (bdprune.verdict)

    def resolve(self, *, has_data: bool, device: torch.device | None = None) -> "Resolved":
        """Check every value and resolve it (``device`` overrides the setting, e.g. the device an
        in-memory model already lives on)."""
        u = None if self.u is None else check_u(self.u)
        check_seed(self.seed)
        check_batch_size(self.batch_size)
        dev = device if device is not None else resolve_device(self.device)
        method_cls, reason = choose_method(self.method, has_data)
        options = method_cls(self.method_args)
        return Resolved(
            device=dev,
            normalize=parse_normalize(self.normalize),
            method=method_cls,
            method_reason=reason,
            method_options=options,
            u=method_cls.default_u if u is None else u,
            seed=self.seed,
            batch_size=self.batch_size,
            fail_threshold=self.fail_threshold,
            thorough=self.thorough,
        )

    def require_arch(self) -> str:
        """The architecture, refused when missing (loading a file needs one)."""
        if not self.arch:
            raise BdpruneError("--arch is required", hint=ARCH_HINT)
        return self.arch



@dataclass(frozen=True)
class Resolved:
    """Checked settings in the form the engine uses."""

    device: torch.device
    normalize: Normalization | None
    method: type[Method]
    method_reason: str
    method_options: Method  # the method with its --method-arg settings parsed
    u: float
    seed: int
    batch_size: int
    fail_threshold: float | None
    thorough: bool


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise BdpruneError(f"unknown --device {spec!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BdpruneError(f"unsupported --device {spec!r}", hint="use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BdpruneError(f"--device {spec}: no CUDA GPU is available here", hint="use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BdpruneError(
                f"--device {spec}: only {torch.cuda.device_count()} GPU(s)", hint=f"use cuda:0..{torch.cuda.device_count() - 1}"
            )
    return device


def choose_method(method: str | None, has_data: bool) -> tuple[type[Method], str]:
    """The method class to run and why it was chosen."""
    if method is not None:
        return METHODS.get(method), "chosen with --method"
    if has_data:
        return METHODS.get("bnp"), "default: --data was given"
    return METHODS.get("clp"), "default: no --data, so the data-free method"


def check_u(u: float) -> float:
    """Refuse a threshold that is not a finite, non-negative number."""
    if not math.isfinite(u) or u < 0:
        raise BdpruneError(f"--u must be a finite number >= 0, got {u}", hint="the paper's default is 3")
    return u


def check_samples(samples: int | None, seed: int = 0) -> None:
    """Refuse a sample count below 1 and a seed torch's generator cannot take."""
    if samples is not None and samples < 1:
        raise BdpruneError(f"--samples must be at least 1, got {samples}")
    check_seed(seed)


def check_seed(seed: int) -> None:
    """Refuse a seed torch's generator cannot take."""
    if not -(2**63) <= seed < 2**64:
        raise BdpruneError(f"--seed {seed} is out of range", hint="use an integer between 0 and 2**64-1")


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size below 1."""
    if batch_size < 1:
        raise BdpruneError(f"--batch-size must be at least 1, got {batch_size}")
