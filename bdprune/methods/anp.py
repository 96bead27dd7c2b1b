"""ANP (Wu & Wang, NeurIPS 2021, "Adversarial Neuron Pruning Purifies Backdoored Deep Models").

On the clean samples, with the model in training mode (BN normalises with batch statistics) and
its weights frozen, learn one mask m in [0, 1] per BN channel (start 1) while an adversary
perturbs every channel multiplicatively, gamma * (m + d) and beta * (1 + e):

    each iteration, on a batch of ``batch`` samples drawn with replacement:
      d, e ~ U[-eps, eps]; then ``steps`` signed-gradient ascent steps of size eps/steps on
      CE(perturbed) w.r.t. d and e (not clamped afterwards, as the reference code);
      loss = alpha * CE(unperturbed) + (1 - alpha) * CE(perturbed); one SGD step on m
      (lr ``lr``, momentum 0.9); clamp m to [0, 1].

Score = the learned mask; a channel with mask <= u (default 0.2, the paper's) is flagged, and
pruning sets its gamma to 0 (beta kept), as the reference code does.

Defaults are the reference code's (csdongxian/ANP_backdoor): eps 0.4, one step, alpha 0.2,
lr 0.2, batch 128, 2000 iterations. No data augmentation is applied to the clean samples (the
reference code uses random crops and flips on CIFAR-10).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..progress import progress_bar
from .base import METHODS, Method, ScoreContext
from .masks import ChannelMasks, cross_entropy, labelled_batches


@METHODS.register("anp")
class ANP(Method):
    """Adversarial Neuron Pruning: masks that keep clean accuracy under adversarial BN noise."""

    name = "anp"
    summary = "ANP: per-channel masks learned under adversarial BN noise; needs labelled clean samples"
    data_role = "clean"
    low_is_suspicious = True
    ranking = "absolute"
    default_u = 0.2
    trains = True
    defaults = {"iterations": 2000, "batch": 128, "eps": 0.4, "steps": 1, "alpha": 0.2, "lr": 0.2}

    def score(self, ctx: ScoreContext) -> dict[str, Tensor]:
        o = self.options
        assert ctx.data is not None
        data = labelled_batches(ctx.data, purpose=f"--method {self.name}", device=ctx.device, batch_size=o["batch"], normalize=ctx.normalize)
        masked = ChannelMasks(ctx.model, device=ctx.device, noise=o["eps"] > 0)
        ctx.notes += [f"{layer}: no affine parameters; not masked" for layer in masked.skipped]
        model = masked.model.train()
        mask_opt = torch.optim.SGD(masked.mask_parameters(), lr=o["lr"], momentum=0.9)
        g = torch.Generator().manual_seed(ctx.seed)
        with progress_bar(o["iterations"], "anp: learning masks", enabled=ctx.show_progress) as advance:
            for _ in range(o["iterations"]):
                images, labels = data.random_batch(g)
                loss_rob = perturb(masked, images, labels, eps=o["eps"], steps=o["steps"], generator=g) if o["eps"] > 0 else 0.0
                masked.perturbed = False
                loss_nat, _ = cross_entropy(model, images, labels)
                loss = o["alpha"] * loss_nat + (1 - o["alpha"]) * loss_rob
                mask_opt.zero_grad(set_to_none=True)
                loss.backward()
                mask_opt.step()
                masked.clamp_masks()
                advance(1)
        return masked.values()


def perturb(masked: ChannelMasks, images: Tensor, labels: Tensor, *, eps: float, steps: int, generator: torch.Generator) -> Tensor:
    """ANP's inner maximisation: draw the noise uniformly in [-eps, eps], take ``steps`` signed
    gradient steps of size eps/steps that raise the loss, and return the cross-entropy of the
    perturbed model (with the graph, for the masks' gradient). The noise is left perturbed."""
    masked.reset_noise(eps, generator)
    masked.perturbed = True
    noise = masked.noise_parameters()
    for _ in range(steps):
        loss, _ = cross_entropy(masked.model, images, labels)
        grads = torch.autograd.grad(loss, noise)
        with torch.no_grad():
            for t, grad in zip(noise, grads):
                t.add_(grad.sign(), alpha=eps / steps)
    loss, _ = cross_entropy(masked.model, images, labels)
    return loss
