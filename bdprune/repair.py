"""Optional recovery after pruning, on the clean samples only: re-estimate the BatchNorm running
statistics (``bn``), fine-tune the whole pruned model a few epochs (``finetune``, as Fine-Pruning,
Liu et al., RAID 2018), or fine-tune it against a universal adversarial perturbation
(``adversarial``, after I-BAU, Zeng et al., ICLR 2022): each batch first moves one shared
perturbation delta (L2 norm at most ``radius * sqrt(pixels)``, in [0, 1] pixel space) a few
normalized-gradient steps up the loss, then trains on the clean and the perturbed batch. A
backdoor is exactly such a shortcut, so the fine-tune is pushed to unlearn it instead of letting
it regrow. I-BAU solves the inner problem with implicit hypergradients; bdprune alternates plain
steps, keeping delta from batch to batch.

Pruned channels stay pruned: after every step their parameters are set back to what pruning
gave them, so the file's ``pruned_channels`` metadata stays true. A backdoor can still regrow
through the channels that remain, so measure ASR after repair (``bdprune eval``), not only before.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .data import ImageSet
from .errors import BdpruneError
from .evaluate import accuracy, predict
from .methods.masks import cross_entropy, labelled_batches
from .prune import Fill, mask_model
from .stats import bn_layers, run_forward

REPAIRS = ("none", "bn", "finetune", "adversarial")


@dataclass
class RepairSettings:
    """How to repair: ``mode`` in REPAIRS, and the fine-tune's epochs, learning rate and batch."""

    mode: str = "none"
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128
    radius: float = 0.2  # adversarial: L2 bound on delta, per sqrt(pixel)
    steps: int = 2  # adversarial: ascent steps on delta per batch

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
    batches = labelled_batches(data, method=f"--repair {settings.mode}", device=device, batch_size=settings.batch_size,
                               normalize=normalize)
    g = torch.Generator().manual_seed(seed)
    if settings.mode == "bn":
        reestimate_bn(net, batches.images, settings.batch_size)
    elif settings.mode in ("finetune", "adversarial"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4)
            delta = torch.zeros_like(batches.raw[:1])
            for _ in range(settings.epochs):
                for raw, labels in batches.shuffled_epoch(g, raw=True):
                    if settings.mode == "adversarial":
                        delta = universal_perturbation(net, batches, raw, labels, delta, settings)
                    net.train()
                    loss, _ = cross_entropy(net, batches.model_input(raw), labels)
                    if settings.mode == "adversarial":
                        loss = loss + cross_entropy(net, batches.model_input((raw + delta).clamp(0, 1)), labels)[0]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    mask_model(net, channels, params, fill)  # hold the pruned channels pruned
    return net.eval()


def universal_perturbation(net: nn.Module, batches, raw: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor,
                           settings: RepairSettings) -> torch.Tensor:
    """``settings.steps`` normalized-gradient ascent steps on one perturbation shared by the whole
    batch (the model in eval mode), projected onto the L2 ball of radius ``radius * sqrt(pixels)``."""
    radius = settings.radius * math.sqrt(raw[0].numel())
    net.eval()
    for _ in range(settings.steps):
        delta = delta.detach().requires_grad_(True)
        loss, _ = cross_entropy(net, batches.model_input((raw + delta).clamp(0, 1)), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + (radius / 2) * grad / grad.norm().clamp_min(1e-12)
            delta = delta * (radius / delta.norm().clamp_min(radius))
    return delta.detach()


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
