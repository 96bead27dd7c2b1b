"""The interface of a published purification run as a ``--repair`` choice: a :class:`Purifier`
trains a pruned model in place on the labelled clean samples (:class:`PurifyJob`), with its
paper's own defaults, and says what it did (:class:`Purified`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..methods.masks import LabelledBatches, cross_entropy
from ..registry import Registry


@dataclass
class PurifyJob:
    """What a purifier gets. ``net`` is trained in place (a copy of the pruned model);
    ``reference`` is a frozen copy of it as the repair found it (eval mode, no gradients).
    ``pixels`` are the clean samples in [0, 1] (N x C x H x W, on ``device``) and ``to_input`` maps
    pixels to what the model takes (the normalization); ``inputs`` = ``to_input(pixels)``.
    ``hold(net)`` sets the pruned channels back to pruned: call it after every optimizer step."""

    net: nn.Module
    reference: nn.Module
    pixels: Tensor
    inputs: Tensor
    labels: Tensor
    to_input: Callable[[Tensor], Tensor]
    hold: Callable[[nn.Module], None]
    epochs: int
    lr: float
    batch_size: int
    generator: torch.Generator
    device: torch.device
    advance: Callable[[int], None] = lambda n: None  # the progress bar, one per epoch

    def batches(self) -> list[Tensor]:
        """One epoch's sample indices in a random order (:meth:`LabelledBatches.shuffled_indices`)."""
        return list(LabelledBatches(self.inputs, self.labels, self.batch_size).shuffled_indices(self.generator))

    def tune(self, opt: torch.optim.Optimizer, inputs: Tensor | None = None,
             penalty: Callable[[], Tensor] | None = None, after_step: Callable[[], None] | None = None) -> None:
        """Train ``net`` in training mode for ``epochs`` on cross-entropy over ``inputs`` (default:
        ``self.inputs``) plus ``penalty()``, with ``opt`` cosine-annealed over the epochs; after each
        step ``after_step()``, then :attr:`hold`."""
        inputs = self.inputs if inputs is None else inputs
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)
        self.net.train()
        for _ in range(self.epochs):
            for idx in self.batches():
                loss, _ = cross_entropy(self.net, inputs[idx], self.labels[idx])
                if penalty is not None:
                    loss = loss + penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                self.hold(self.net)
            schedule.step()
            self.advance(1)


@dataclass
class Purified:
    """What a purifier reports: notes for the user and text metadata for the output file."""

    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


class Purifier:
    """A published purification. Subclasses set the class attributes and implement :meth:`run`."""

    name: str = ""
    summary: str = ""  # one line for --help and the README: the paper and what it trains
    epochs: int = 10  # the paper's defaults, used unless --repair-epochs / --repair-lr say otherwise
    lr: float = 0.01
    batch_size: int = 128

    def run(self, job: PurifyJob) -> Purified:
        """Train ``job.net`` in place; return the notes and metadata."""
        raise NotImplementedError


PURIFIERS: Registry[type[Purifier]] = Registry("--repair purification")
