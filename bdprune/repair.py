"""Optional recovery after pruning, on the clean samples only: re-estimate the BatchNorm running
statistics (``bn``) or fine-tune the whole pruned model a few epochs (``finetune``, as
Fine-Pruning, Liu et al., RAID 2018).

Pruned channels stay pruned: after every step their parameters are set back to what pruning
gave them, so the file's ``pruned_channels`` metadata stays true. A backdoor can still regrow
through the channels that remain, so measure ASR after repair (``bdprune eval``), not only before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .data import ImageSet
from .errors import BdpruneError
from .evaluate import accuracy, predict
from .methods.masks import cross_entropy, labelled_batches, seeded_rng
from .prune import Fill, mask_model
from .stats import bn_layers, run_forward

REPAIRS = ("none", "bn", "finetune")


@dataclass
class RepairSettings:
    """How to repair: ``mode`` in REPAIRS, and the fine-tune's epochs, learning rate and batch."""

    mode: str = "none"
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128

    def check(self) -> "RepairSettings":
        """Refuse an unknown mode or a non-positive setting."""
        if self.mode not in REPAIRS:
            raise BdpruneError(f"unknown --repair {self.mode!r}", hint=f"use {', '.join(REPAIRS)}")
        if self.epochs < 1 or not self.lr > 0 or self.batch_size < 2:
            raise BdpruneError("--repair-epochs must be >= 1 and the learning rate > 0")
        return self


def repair_model(
    model: nn.Module,
    channels: Mapping[str, Sequence[int]],
    params: Sequence[str],
    fill: Fill | None,
    data: ImageSet,
    settings: RepairSettings,
    *,
    device: torch.device,
    normalize=None,
    seed: int = 0,
) -> nn.Module:
    """A repaired copy of the pruned ``model`` (``model`` itself is not changed)."""
    net = copy.deepcopy(model).to(device)
    batches = labelled_batches(data, purpose=f"--repair {settings.mode}", device=device, batch_size=settings.batch_size,
                               normalize=normalize)
    g = torch.Generator().manual_seed(seed)
    if settings.mode == "bn":
        reestimate_bn(net, batches.images, settings.batch_size)
    elif settings.mode == "finetune":
        with seeded_rng(seed, device):
            net.train()
            opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4)
            for _ in range(settings.epochs):
                for images, labels in batches.shuffled_epoch(g):
                    loss, _ = cross_entropy(net, images, labels)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    mask_model(net, channels, params, fill)  # hold the pruned channels pruned
    return net.eval()


def reestimate_bn(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Replace every BN layer's running mean and variance by the cumulative average over
    ``images`` (model inputs, already normalized), leaving all other parameters unchanged."""
    saved = {}
    for name, bn in bn_layers(model):
        if bn.running_mean is None:
            continue
        saved[name] = bn.momentum
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            if len(batch) > 1:
                run_forward(model, batch)
    for name, bn in bn_layers(model):
        if name in saved:
            bn.momentum = saved[name]
    model.eval()


def clean_accuracy(model: nn.Module, data: ImageSet, *, device: torch.device, normalize=None) -> float:
    """ACC of ``model`` on the labelled clean samples (what repair optimises; not a test score)."""
    return accuracy(predict(model, data.images, device=device, normalize=normalize), data.labels)
