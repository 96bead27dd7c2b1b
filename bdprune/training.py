"""Make backdoored and clean models to test the defenses on: data poisoning (all-to-one,
all-to-all, clean-label, and trigger-carrying "cover" images that keep their labels) and a small,
seeded training loop. Used by the built-in demo, the benchmark zoos and the tests."""

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


POISON_MODES = ("all-to-one", "all-to-all", "clean-label", "cover")


def poison(images: Tensor, labels: Tensor, trigger, *, rate: float, target: int, seed: int = 0, mode: str = "all-to-one",
           num_classes: int | None = None, exclude: Tensor | None = None) -> PoisonedSet:
    """Apply ``trigger`` to ``rate`` of the whole set (at most the candidates there are) and relabel:

    * ``all-to-one`` (dirty label): images whose label is not ``target`` -> ``target``;
    * ``all-to-all``: any image, label ``y`` -> ``(y + 1) % num_classes`` (``target`` unused);
    * ``clean-label``: only images already of class ``target``, labels kept (the trigger must
      be learned as a feature of the class);
    * ``cover``: any image, labels kept (Adaptive-Blend's regularization samples: the trigger
      alone must not be enough).

    ``exclude`` (a bool mask) keeps images out of the draw, e.g. those a first trigger took."""
    if mode not in POISON_MODES:
        raise ValueError(f"unknown poisoning mode {mode!r}; use one of {POISON_MODES}")
    g = torch.Generator().manual_seed(seed)
    eligible = torch.ones(len(labels), dtype=torch.bool) if exclude is None else ~exclude
    if mode == "all-to-one":
        eligible &= labels != target
    elif mode == "clean-label":
        eligible &= labels == target
    candidates = eligible.nonzero().flatten()
    n = min(len(candidates), int(round(rate * len(images))))
    chosen = candidates[torch.randperm(len(candidates), generator=g)[:n]]
    images, labels = images.clone(), labels.clone()
    if n:
        images[chosen] = trigger.apply(images[chosen])
        if mode == "all-to-one":
            labels[chosen] = target
        elif mode == "all-to-all":
            classes = num_classes if num_classes is not None else int(labels.max()) + 1
            labels[chosen] = (labels[chosen] + 1) % classes
    mask = torch.zeros(len(images), dtype=torch.bool)
    mask[chosen] = True
    return PoisonedSet(images, labels, mask, target)


def shift_images(images: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Each image translated by its own random offset of at most ``pad`` pixels along each axis
    (zero padding, then a crop of the original size): the usual random-crop augmentation."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, y : y + h, x : x + w] for i, (x, y) in enumerate(zip(dx, dy))])


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
    augment: int = 0,
) -> nn.Module:
    """SGD with momentum and a one-cycle learning rate, seeded; returns ``model`` in eval mode.
    ``augment`` > 0 shifts every training image by up to that many pixels each time it is seen."""
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
            x = shift_images(images[idx], augment, g) if augment else images[idx]
            x, y = x.to(device), labels[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()
