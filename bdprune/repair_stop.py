"""When ``--repair finetune`` / ``unlearn`` stop: a share of the clean samples is held back from the
training (``--repair-holdout``), and before every epoch the repair checks them. It stops once the
synthesized triggers no longer work on them (each moves at most TRIGGER_FLIP_BAR of their
predictions) and their accuracy is back within ACC_SLACK points of the model's before pruning.
A clean model with nothing pruned and no trigger found therefore stops before the first epoch,
unchanged; a backdoored one trains as long as its trigger still works, up to ``--repair-epochs``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .data import ImageSet
from .evaluate import accuracy, predict

TRIGGER_FLIP_BAR = 0.10  # share of held-back predictions a trigger may still move when the repair stops
ACC_SLACK = 0.5  # points of held-back ACC below the model's before pruning that count as recovered


def split_held_back(data: ImageSet, share: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """``data`` split at random (seeded) into the samples to train on and ``share`` of them held back."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n = max(1, int(round(share * len(data))))
    keep, held = order[n:], order[:n]
    return (ImageSet(data.images[keep], data.labels[keep], data.source),
            ImageSet(data.images[held], data.labels[held], data.source))


@dataclass
class HeldBack:
    """The held-back samples and the accuracy to recover on them (the model's before pruning, %)."""

    data: ImageSet
    target_acc: float

    def done(self, model: nn.Module, triggers: Sequence[Tensor], *, device: torch.device, normalize=None) -> tuple[bool, str]:
        """Whether the repair can stop now, and a line saying why (or why not)."""
        plain = predict(model, self.data.images, device=device, normalize=normalize)
        acc = accuracy(plain, self.data.labels)
        flips = [float((predict(model, (self.data.images + p).clamp(0.0, 1.0), device=device, normalize=normalize) != plain)
                       .double().mean()) for p in triggers]
        worst = max(flips, default=0.0)
        done = worst <= TRIGGER_FLIP_BAR and acc >= self.target_acc - ACC_SLACK
        return done, (f"held-back ACC {acc:.1f}% (before pruning {self.target_acc:.1f}%), synthesized triggers move "
                      f"at most {worst:.0%} of their predictions")
