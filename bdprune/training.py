"""Make backdoored and clean models to test the defenses on: all-to-one data poisoning and a
small, seeded training loop. Used by the built-in demo, the benchmark zoo and the tests."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class PoisonedSet:
    """A training set with a share of images triggered and relabelled to ``target``."""

    images: Tensor
    labels: Tensor
    poisoned: Tensor  # bool mask of the triggered images
    target: int


def poison(images: Tensor, labels: Tensor, trigger, *, rate: float, target: int, seed: int = 0) -> PoisonedSet:
    """All-to-one dirty-label poisoning: ``rate`` of the whole set (drawn from images whose label
    is not ``target``) gets ``trigger`` applied and its label set to ``target``."""
    g = torch.Generator().manual_seed(seed)
    candidates = (labels != target).nonzero().flatten()
    n = min(len(candidates), int(round(rate * len(images))))
    chosen = candidates[torch.randperm(len(candidates), generator=g)[:n]]
    images, labels = images.clone(), labels.clone()
    if n:
        images[chosen] = trigger.apply(images[chosen])
        labels[chosen] = target
    mask = torch.zeros(len(images), dtype=torch.bool)
    mask[chosen] = True
    return PoisonedSet(images, labels, mask, target)


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """SGD with momentum and a cosine learning rate, seeded; returns ``model`` in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample in training mode
                continue
            x, y = images[idx].to(device), labels[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()
