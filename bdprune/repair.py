"""Optional recovery after pruning, on the clean samples only: re-estimate the BatchNorm running
statistics (``bn``), fine-tune the whole pruned model a few epochs (``finetune``, as
Fine-Pruning, Liu et al., RAID 2018), or fine-tune it to ignore the trigger the verdict's class
probe synthesizes (``unlearn``, the unlearning of Neural Cleanse, Wang et al., S&P 2019, with
bdprune's probe in place of its trigger reverse-engineering).

``unlearn`` runs the verdict's trigger probe (bdprune.probe) on the model before pruning (pruning
takes away the BN divergence a trigger explains): every synthesized trigger the verdict counts
(it sends more than the verdict's bar of the clean images to one class) is unlearned, several
when there are several targets. Each fine-tuning batch is then the clean batch plus the same
images carrying one of them (drawn at random per batch) with their true labels, so the network
learns that the trigger means nothing. When no trigger is found ``unlearn`` fine-tunes on the
clean batches alone, exactly as ``finetune``: unlearning a clean model's natural weak spots cost
clean models 0.3-1.4 points of ACC on the zoo's tune part.

Pruned channels stay pruned: after every step their parameters are set back to what pruning
gave them, so the file's ``pruned_channels`` metadata stays true. A backdoor can still regrow
through the channels that remain, so measure ASR after repair (``bdprune eval``), not only before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .data import ImageSet
from .errors import BdpruneError
from .evaluate import accuracy, predict
from .methods.masks import cross_entropy, labelled_batches, seeded_rng
from .progress import progress_bar
from .prune import Fill, mask_model
from .stats import bn_layers, run_forward

REPAIRS = ("none", "bn", "finetune", "unlearn")


@dataclass
class RepairSettings:
    """How to repair: ``mode`` in REPAIRS, and the fine-tune's epochs, learning rate and batch."""

    mode: str = "none"
    epochs: int = 10  # finetune and unlearn
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
    triggers: Sequence[Tensor] | None = None,
    show_progress: bool = False,
) -> nn.Module:
    """A repaired copy of the pruned ``model`` (``model`` itself is not changed). ``triggers`` are
    the pixel-space perturbations ``unlearn`` teaches the model to ignore (:func:`find_triggers`);
    without them ``unlearn`` is ``finetune``."""
    net = copy.deepcopy(model).to(device)
    batches = labelled_batches(data, purpose=f"--repair {settings.mode}", device=device, batch_size=settings.batch_size,
                               normalize=normalize)
    if settings.mode == "bn":
        reestimate_bn(net, batches.images, settings.batch_size)
        return net.eval()
    stamped = []
    if settings.mode == "unlearn":
        stamped = [labelled_batches(ImageSet((data.images + p).clamp(0.0, 1.0), data.labels, data.source), purpose="--repair unlearn",
                                    device=device, batch_size=settings.batch_size, normalize=normalize).images
                   for p in triggers or ()]
    g = torch.Generator().manual_seed(seed)
    with seeded_rng(seed, device):
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4)
        with progress_bar(settings.epochs, f"--repair {settings.mode}: epochs", enabled=show_progress) as advance:
            for _ in range(settings.epochs):
                _train_epoch(net, batches, stamped, g, opt, channels, params, fill)
                advance(1)
    return net.eval()


def _train_epoch(net, batches, stamped, g, opt, channels, params, fill) -> None:
    """One epoch of finetune / unlearn over shuffled clean batches (each with its triggered copy when ``stamped``)."""
    for idx in batches.shuffled_indices(g):
        images, labels = batches.images[idx], batches.labels[idx]
        if stamped:  # the same images carrying one synthesized trigger, with their true labels
            pick = stamped[int(torch.randint(len(stamped), (1,), generator=g))]
            images, labels = torch.cat([images, pick[idx]]), torch.cat([labels, labels])
        loss, _ = cross_entropy(net, images, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mask_model(net, channels, params, fill)  # hold the pruned channels pruned


@dataclass
class Triggers:
    """What ``unlearn`` removes: the suspected target classes and their synthesized triggers."""

    targets: list[int]
    share: float  # the largest share of clean images a trigger sends to one class
    perturbations: list[Tensor]  # C x H x W each, pixel space

    def metadata(self) -> dict[str, str]:
        """The file's text metadata for this unlearning."""
        return {"unlearned_class": ",".join(map(str, self.targets)), "unlearned_share": f"{self.share:.4f}"}


def find_triggers(model: nn.Module, data: ImageSet, *, device: torch.device, normalize=None) -> tuple[Triggers | None, str]:
    """The triggers ``unlearn`` removes, and a note saying what was found: every synthesized trigger
    of the verdict's probe (bdprune.probe) that the verdict would count, i.e. that sends more than
    its bar (TRIGGER_BAR) of the clean images to one class and is not explained by the class
    make-up of the data. Several classes when several triggers are found. Otherwise None."""
    from .verdict import TRIGGER_BAR, trigger_candidates

    none = "--repair unlearn found no trigger ({}): fine-tuned on the clean samples alone"
    candidates, kept, probe = trigger_candidates(model, data, normalize=normalize, device=device)
    if probe is None:
        return None, none.format("the trigger probe cannot run: no BatchNorm statistics to match")
    chosen = [c for c in kept if c.share > TRIGGER_BAR]
    if not chosen:
        best = max((c.share for c in kept), default=0.0)
        return None, none.format(f"the best synthesized trigger sends {best:.0%} of the images to one class, not above the bar {TRIGGER_BAR:.0%}")
    found = Triggers(sorted({c.target for c in chosen}), max(c.share for c in chosen), [c.perturbation for c in chosen])
    classes = ", ".join(map(str, found.targets))
    return found, (f"--repair unlearn: class {classes}, whose synthesized trigger sends {found.share:.0%} of the clean images there; "
                   f"unlearned {len(found.perturbations)} synthesized triggers")


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
