"""RNP (Li et al., ICML 2023, "Reconstructive Neuron Pruning for Backdoor Defense").

Two steps on the clean samples, both with the model in training mode (BN uses batch statistics):

1. Unlearn: gradient *ascent* on the cross-entropy over all weights of a copy of the model
   (SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1 after epochs 10 and 20), one epoch
   at a time, stopping after the first epoch whose running accuracy on the samples is <= 20%
   (at most 21 epochs, as the reference code's ``range(0, 20 + 1)``).
2. Recover: on the unlearned copy, learn one mask per BN channel on gamma only (start 1, weights
   frozen) that minimises alpha * CE (alpha 0.2; SGD lr 0.2, momentum 0.9, 20 epochs), clamped
   to [0, 1] after every step. Channels the unlearning broke and the clean task does not need,
   the backdoor's, stay near 0.

Score = the recovered mask; a channel with mask <= u (default 0.2) is flagged, and pruning sets
gamma to 0 in the *original* model (beta kept), as the reference code does.

Defaults follow the reference code (bboylyg/RNP, batch 128). Its unlearning loop calls
``clip_grad_norm_`` before ``backward()``, which clips nothing; bdprune does not clip either.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..progress import progress_bar
from .base import METHODS, Method, ScoreContext
from .masks import ChannelMasks, LabelledBatches, cross_entropy, labelled_batches

UNLEARN_MILESTONES = (10, 20)


@METHODS.register("rnp")
class RNP(Method):
    """Reconstructive Neuron Pruning: unlearn, then learn masks that recover clean accuracy."""

    name = "rnp"
    summary = "RNP: unlearn on clean samples, then masks that recover them; needs labelled clean samples"
    data_role = "clean"
    low_is_suspicious = True
    ranking = "absolute"
    default_u = 0.2
    trains = True
    defaults = {
        "batch": 128,
        "unlearn_lr": 0.01,
        "unlearn_epochs": 20,
        "stop_acc": 0.2,
        "recover_lr": 0.2,
        "recover_epochs": 20,
        "alpha": 0.2,
    }

    def score(self, ctx: ScoreContext) -> dict[str, Tensor]:
        o = self.options
        assert ctx.data is not None
        data = labelled_batches(ctx.data, purpose=f"--method {self.name}", device=ctx.device, batch_size=o["batch"], normalize=ctx.normalize)
        g = torch.Generator().manual_seed(ctx.seed)
        total = o["unlearn_epochs"] + 1 + o["recover_epochs"]
        with progress_bar(total, "rnp: unlearn, then recover", enabled=ctx.show_progress) as advance:
            unlearned, epochs, acc = unlearn(ctx.model, data, lr=o["unlearn_lr"], max_epochs=o["unlearn_epochs"] + 1,
                                             stop_acc=o["stop_acc"], generator=g, advance=advance)
            if acc > o["stop_acc"]:
                ctx.notes.append(f"rnp: unlearning stopped after {epochs} epochs at {100 * acc:.1f}% accuracy on the samples, "
                                 f"above the {100 * o['stop_acc']:g}% it aims for")
            masks = recover(unlearned, data, lr=o["recover_lr"], epochs=o["recover_epochs"], alpha=o["alpha"], generator=g,
                            advance=advance)
        ctx.notes += [f"{layer}: no affine parameters; not masked" for layer in masks.skipped]
        return masks.values()


def unlearn(model: nn.Module, data: LabelledBatches, *, lr: float, max_epochs: int, stop_acc: float,
            generator: torch.Generator, advance=lambda n: None) -> tuple[nn.Module, int, float]:
    """RNP's step 1 on a copy of ``model``: gradient ascent on the clean cross-entropy until an
    epoch's running accuracy is <= ``stop_acc``. Returns (the copy, epochs run, last accuracy)."""
    net = copy.deepcopy(model).to(data.images.device).train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(UNLEARN_MILESTONES), gamma=0.1)
    acc, epoch = 1.0, 0
    for epoch in range(1, max_epochs + 1):
        correct = seen = 0
        for images, labels in data.shuffled_epoch(generator):
            loss, right = cross_entropy(net, images, labels)
            opt.zero_grad(set_to_none=True)
            (-loss).backward()
            opt.step()
            correct, seen = correct + int(right), seen + len(labels)
        sched.step()
        advance(1)
        acc = correct / max(seen, 1)
        if acc <= stop_acc:
            break
    return net, epoch, acc


def recover(unlearned: nn.Module, data: LabelledBatches, *, lr: float, epochs: int, alpha: float,
            generator: torch.Generator, advance=lambda n: None) -> ChannelMasks:
    """RNP's step 2: masks on gamma of the unlearned model that minimise ``alpha`` * CE."""
    masked = ChannelMasks(unlearned, device=data.images.device)
    model = masked.model.train()
    opt = torch.optim.SGD(masked.mask_parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for images, labels in data.shuffled_epoch(generator):
            loss, _ = cross_entropy(model, images, labels)
            opt.zero_grad(set_to_none=True)
            (alpha * loss).backward()
            opt.step()
            masked.clamp_masks()
        advance(1)
    return masked
