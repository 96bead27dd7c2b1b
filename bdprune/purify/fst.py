"""FST, Feature Shift Tuning (Min, Qin, Shen and Cheng, NeurIPS 2023), as in its reference code
(AISafety-HKUST/stable_backdoor_purification, fine_tune/ft.py, ``--ft_mode fst``).

The linear classifier is re-initialized (weight and bias uniform in +-1/sqrt(fan-in), PyTorch's
default for nn.Linear), then the whole network is fine-tuned on the clean samples with

    loss = cross-entropy + alpha * sum(W * W_original)

(W: the classifier's weight), which pushes W away from the compromised original so the features
must shift; after every step W is rescaled to the original's Frobenius norm. SGD with momentum
0.9 and no weight decay, cosine-annealed over the epochs; alpha 0.2, 10 epochs, lr 0.01, batch 128
(the reference code's defaults; its README runs CIFAR-10 with alpha 0.1 and warns that the
re-initialization costs accuracy on many classes). Not in the reference: no data augmentation
(bdprune fine-tunes on the samples as given), and the pruned channels are held pruned."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import BdpruneError
from ..stats import last_linear
from .base import PURIFIERS, Purified, Purifier, PurifyJob


def classifier(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear (:func:`bdprune.stats.last_linear`), taken as its classifier head."""
    head = last_linear(model)
    if head is None:
        raise BdpruneError("--repair fst re-initializes the linear classifier, and this model has no nn.Linear",
                           hint="use --repair unlearn or finetune")
    return head


def shift_penalty(weight: torch.Tensor, original: torch.Tensor, alpha: float) -> torch.Tensor:
    """FST's regularizer ``alpha * sum(W * W_original)``: the inner product of the weights."""
    return alpha * (weight * original).sum()


@PURIFIERS.register("fst")
class FeatureShiftTuning(Purifier):
    name = "fst"
    summary = "Feature Shift Tuning (Min et al., NeurIPS 2023): re-initialized classifier, tuned away from the original's weights"
    epochs, lr, batch_size = 10, 0.01, 128
    alpha = 0.2

    def run(self, job: PurifyJob) -> Purified:
        """Re-initialize the classifier and fine-tune with the feature-shift penalty (module docstring)."""
        net = job.net
        head = classifier(net)
        original = head.weight.detach().clone()
        norm = original.norm()
        bound = 1 / math.sqrt(head.in_features)
        with torch.no_grad():
            head.weight.uniform_(-bound, bound, generator=job.generator)
            if head.bias is not None:
                head.bias.uniform_(-bound, bound, generator=job.generator)

        def rescale() -> None:
            with torch.no_grad():
                head.weight.mul_(norm / head.weight.norm())

        job.tune(torch.optim.SGD(net.parameters(), lr=job.lr, momentum=0.9),
                 penalty=lambda: shift_penalty(head.weight, original, self.alpha), after_step=rescale)
        return Purified([f"--repair fst: classifier re-initialized, tuned {job.epochs} epochs with alpha {self.alpha:g}"],
                        {"fst_alpha": f"{self.alpha:g}"})
