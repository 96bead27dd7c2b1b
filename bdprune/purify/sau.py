"""SAU, Shared Adversarial Unlearning (Wei, Zhang, Zha and Wu, NeurIPS 2023), as in its reference
code (BackdoorBench, defense/sau.py, by the paper's first author: ``Shared_PGD`` and ``mitigation``).

Each batch, a PGD attack in pixel space looks for *shared* adversarial examples: perturbations
that fool both the model being trained and a frozen copy of the model as given (the reference)
into the same wrong class. Its loss is ``beta_1 * adv + beta_2 * js``: ``adv`` is minus the mean
cross-entropy (halved over the two models) of the samples each model still classifies as on the
clean image, ``js`` the Jensen-Shannon divergence of the two models' outputs on the samples not yet
shared. The model is then trained on ``lmd_1 * CE(clean) + lmd_2 * CE(perturbed) + lmd_3 * shared``,
where ``shared`` pushes the model away from the reference's wrong class on the samples the
perturbation fools the reference with (:func:`shared_loss`).

Defaults (the reference config): 100 rounds, batch 256, Adam lr 1e-4 (betas 0.9/0.999, no weight
decay), L_inf bound 0.2, 5 sign steps of 0.2 from the 'max' init (+0.2 everywhere), beta_1 0.01,
beta_2 1, lmd_1 1, lmd_2 0, lmd_3 1, one outer step per batch, and the model in eval mode
throughout (BN statistics frozen; ``train_mode`` off). As in the reference: the perturbed image is
not clamped to [0, 1], and the learning rate stays constant (the code builds a cosine schedule
but never steps it). Not in the reference: the pruned channels are held pruned, and a last batch
of one sample is dropped (:meth:`PurifyJob.batches`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..stats import run_forward
from .base import PURIFIERS, Purified, Purifier, PurifyJob


def js_divergence(logits: Tensor, logits_ref: Tensor) -> Tensor:
    """Per-sample Jensen-Shannon divergence of two softmax outputs (probabilities clamped at 1e-8)."""
    p = F.softmax(logits, dim=1).clamp(min=1e-8)
    q = F.softmax(logits_ref, dim=1).clamp(min=1e-8)
    m = 0.5 * (p + q)
    return (0.5 * (p * p.log() + q * q.log()) - 0.5 * (p * m.log() + q * m.log())).sum(dim=1)


def pgd_loss(per_logits: Tensor, per_logits_ref: Tensor, labels: Tensor, ori_lab: Tensor, ori_lab_ref: Tensor,
             *, beta_1: float, beta_2: float) -> tuple[Tensor, Tensor]:
    """The attack's loss (minimized) and which samples are already shared adversarial examples.
    A sample fools a model when its prediction moves off the model's prediction on the clean image."""
    fooled, fooled_ref = per_logits.argmax(1) != ori_lab, per_logits_ref.argmax(1) != ori_lab_ref
    shared = fooled & fooled_ref & (per_logits.argmax(1) == per_logits_ref.argmax(1))
    n = len(labels)
    adv = (F.cross_entropy(per_logits, labels, reduction="none")[~fooled].sum()
           + F.cross_entropy(per_logits_ref, labels, reduction="none")[~fooled_ref].sum())
    adv = -adv / 2 / n
    js = js_divergence(per_logits, per_logits_ref)[~shared].sum() / n
    return beta_1 * adv + beta_2 * js, shared


def shared_pgd(model: nn.Module, reference: nn.Module, pixels: Tensor, labels: Tensor,
               to_input: Callable[[Tensor], Tensor], *, bound: float = 0.2, step: float = 0.2, steps: int = 5,
               beta_1: float = 0.01, beta_2: float = 1.0) -> Tensor:
    """A per-sample pixel-space perturbation within ``+-bound`` (L_inf) that both models misread
    alike: starts at ``+bound`` and takes up to ``steps`` signed steps down :func:`pgd_loss`, stopping
    once every sample is a shared adversarial example. Both models stay as they are."""
    with torch.no_grad():
        inputs = to_input(pixels)
        ori_lab, ori_lab_ref = run_forward(model, inputs).argmax(1), run_forward(reference, inputs).argmax(1)
    pert = torch.full_like(pixels, bound).clamp(-bound, bound).requires_grad_(True)
    for _ in range(steps):
        per_inputs = to_input(pixels + pert)
        loss, shared = pgd_loss(run_forward(model, per_inputs), run_forward(reference, per_inputs), labels,
                                ori_lab, ori_lab_ref, beta_1=beta_1, beta_2=beta_2)
        (grad,) = torch.autograd.grad(loss, pert)  # the reference's backward, without the model's grads
        with torch.no_grad():
            pert -= step * grad.sign()
            pert.clamp_(-bound, bound)
        if bool(shared.all()):
            break
    return pert.detach()


def shared_loss(per_logits: Tensor, label_ref: Tensor, poisoned: Tensor) -> Tensor:
    """SAU's unlearning term: on the ``poisoned`` samples (those the perturbation fools the
    reference with), ``-(log(1e-6 + min(1 - p, 0.999)) + log(1 + 1e-6 - max(p, 0.001))) / 2``
    with ``p`` the model's probability of the reference's class ``label_ref``; summed, over N."""
    if not bool(poisoned.any()):
        return per_logits.new_zeros(())
    one_hot = F.one_hot(label_ref, num_classes=per_logits.shape[1])
    probs = F.softmax(per_logits, dim=1)
    neg_p = (probs * (1 - one_hot)).sum(dim=1)[poisoned]  # 1 - p, summed as the reference does
    pos_p = (probs * one_hot).sum(dim=1)[poisoned]
    loss = (-torch.log(1e-6 + neg_p.clamp(max=0.999)).sum() - torch.log(1 + 1e-6 - pos_p.clamp(min=0.001)).sum()) / 2
    return loss / len(per_logits)


def unlearning_loss(net: nn.Module, reference: nn.Module, inputs: Tensor, per_inputs: Tensor, labels: Tensor,
                    *, lmd_1: float = 1.0, lmd_2: float = 0.0, lmd_3: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """SAU's outer loss ``lmd_1 * CE(clean) + lmd_2 * CE(perturbed) + lmd_3 * shared`` on model inputs
    (clean and perturbed), with the samples that fool the reference (its perturbed prediction is
    neither the label nor its clean prediction) and those of them that are shared adversarial."""
    logits, per_logits = run_forward(net, torch.cat([inputs, per_inputs])).split(len(labels))
    with torch.no_grad():
        ori_lab_ref = run_forward(reference, inputs).argmax(1)
        label_ref = run_forward(reference, per_inputs).argmax(1)
    label = per_logits.argmax(1)
    poisoned = (label_ref != labels) & (label_ref != ori_lab_ref)
    shared = (label != labels) & poisoned & (label == label_ref)
    loss = (lmd_1 * F.cross_entropy(logits, labels) + lmd_2 * F.cross_entropy(per_logits, labels)
            + lmd_3 * shared_loss(per_logits, label_ref, poisoned))
    return loss, poisoned, shared


@PURIFIERS.register("sau")
class SharedAdversarialUnlearning(Purifier):
    name = "sau"
    summary = "Shared Adversarial Unlearning (Wei et al., NeurIPS 2023): unlearns adversarial examples shared with the original model"
    epochs, lr, batch_size = 100, 1e-4, 256
    bound, step, steps = 0.2, 0.2, 5
    beta_1, beta_2 = 0.01, 1.0
    lmd_1, lmd_2, lmd_3 = 1.0, 0.0, 1.0

    def outer_step(self, job: PurifyJob, opt: torch.optim.Optimizer, idx: Tensor) -> tuple[int, int]:
        """One batch: the shared PGD, then one Adam step on :func:`unlearning_loss`; returns how many
        samples fool the reference, and how many of those are shared adversarial examples."""
        pixels, labels = job.pixels[idx], job.labels[idx]
        pert = shared_pgd(job.net, job.reference, pixels, labels, job.to_input, bound=self.bound, step=self.step,
                          steps=self.steps, beta_1=self.beta_1, beta_2=self.beta_2)
        loss, poisoned, shared = unlearning_loss(job.net, job.reference, job.inputs[idx], job.to_input(pixels + pert),
                                                 labels, lmd_1=self.lmd_1, lmd_2=self.lmd_2, lmd_3=self.lmd_3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        job.hold(job.net)
        return int(poisoned.sum()), int(shared.sum())

    def run(self, job: PurifyJob) -> Purified:
        """Alternate shared PGD and unlearning for ``job.epochs`` rounds (module docstring)."""
        opt = torch.optim.Adam([p for p in job.net.parameters() if p.requires_grad], lr=job.lr,
                               betas=(0.9, 0.999), weight_decay=0)
        job.net.eval()  # train_mode off: BN statistics stay frozen, as in the reference
        poisoned = shared = seen = 0
        for _ in range(job.epochs):
            poisoned = shared = seen = 0
            for idx in job.batches():
                p, s = self.outer_step(job, opt, idx)
                poisoned, shared, seen = poisoned + p, shared + s, seen + len(idx)
            job.advance(1)
        rounds = f"{job.epochs} round" + ("" if job.epochs == 1 else "s")
        note = (f"--repair sau: {rounds} of shared adversarial unlearning (L_inf {self.bound:g}, "
                f"{self.steps} PGD steps); last round: {shared}/{seen} samples shared adversarial, "
                f"{poisoned} fooled the model as given")
        return Purified([note], {"sau_bound": f"{self.bound:g}", "sau_pgd_steps": str(self.steps),
                                 "sau_pgd_step": f"{self.step:g}", "sau_beta": f"{self.beta_1:g},{self.beta_2:g}",
                                 "sau_lambda": f"{self.lmd_1:g},{self.lmd_2:g},{self.lmd_3:g}"})
