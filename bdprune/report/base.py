"""The interface every scan report format implements, and the registry that names them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from rich.console import Console

from ..registry import Registry
from ..scoring import ScanFailure, ScanResult


class Reporter(ABC):
    """Writes the results of one scan call (one entry per checkpoint) to a console."""

    @abstractmethod
    def write(self, results: Sequence[ScanResult], console: Console, *, top: int, errors: Sequence[ScanFailure] = ()) -> None:
        """Render ``results``, then ``errors`` (the checkpoints that could not be scanned);
        ``top`` bounds how many channels a human-facing format lists."""


REPORTERS: Registry[type[Reporter]] = Registry("output format")
"""Report formats by ``--format`` name: ``REPORTERS.get(name)()`` is a :class:`Reporter`."""
