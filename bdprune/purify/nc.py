"""NC, Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng and Zhao, IEEE S&P 2019), after the
authors' code (bolunwang/backdoor: visualizer.py, mad_outlier_detection.py) and BackdoorBench's
PyTorch port (defense/nc.py, config/defense/nc/config.yaml), whose defaults are used.

For every class k a trigger is reverse-engineered on the frozen input model: a mask m (1 x H x W)
and a pattern p (C x H x W), both tanh(theta) / (2 + 1e-7) + 0.5 in pixel space (thetas start at
1), stamped as x' = (1 - m) * x + m * p, minimizing cross-entropy(f(x'), k) + cost * |m|_1 with
Adam (lr 0.1, betas 0.5 and 0.9), batches of 256, 80 epochs over the clean samples. The cost
starts at 1e-3; after 5 epochs in a row at >= 98% attack success it is multiplied by 2, after 5
below divided by 2**1.5. An epoch's mask is kept when it succeeds with a smaller mean L1 than any
before; the search stops early once the cost went both up and down and the best L1 has not
dropped below 0.99 of its best for 25 epochs. Labels whose best mask's L1 lies below the median
with |L1 - median| / MAD > 2 (MAD = 1.4826 * median absolute deviation) are flagged. When none
is, the model is returned unchanged, as BackdoorBench does. Else the model unlearns: 20% of the
clean samples carry a flagged label's reversed trigger with their true labels (several flagged
labels share that 20%), and the whole network is fine-tuned on the clean 80% and stamped 20%
with SGD (lr 0.01, momentum 0.9, weight decay 5e-4), cosine-annealed, 100 epochs, batch 256.

The authors' example (gtsrb_visualize_example.py) differs: random initial mask and pattern, the
cost starting at 0 (set to 1e-3 after 5 successful epochs), 99% success, batches of 32, early
stop after 25 epochs at threshold 1.0, 2 - 1e-7 in the tanh (its Visualizer's own defaults:
patience 10, early stop 2 x 10 epochs at 0.99). Their repository has no unlearning code.

Not as in either reference: no data augmentation; the median is the middle value, or the mean of
the two middle ones (numpy's, as the authors'; BackdoorBench's torch.median takes the lower);
attack success counts the epoch's samples (the authors'; BackdoorBench averages the batches); a
class never reaching 98% keeps its last mask (the authors'; BackdoorBench keeps its first
epoch's); the triggers are stamped as floats (BackdoorBench rereads min-max rescaled uint8 PNGs);
the 20% are drawn at random and split between the flagged labels (BackdoorBench stamps the same
last 20% once per flagged label, adding 20% of the samples per label); the cosine schedule spans
the epochs run (BackdoorBench fixes T_max at 100); the pruned channels are held pruned."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..stats import run_forward
from .base import PURIFIERS, Purified, Purifier, PurifyJob

EPSILON = 1e-7
CONSISTENCY = 1.4826  # MAD of a normal distribution -> its standard deviation


def box(theta: Tensor) -> Tensor:
    """NC's tanh parametrization of a mask or pattern: ``tanh(theta) / (2 + eps) + 0.5``, in (0, 1)."""
    return torch.tanh(theta) / (2 + EPSILON) + 0.5


def stamp(pixels: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """Pixels carrying a trigger: ``(1 - mask) * pixels + mask * pattern``."""
    return (1 - mask) * pixels + mask * pattern


@dataclass
class CostSchedule:
    """The weight of the mask's L1 in the loss, raised by ``up`` after ``patience`` successful
    epochs in a row and lowered by ``down`` after ``patience`` failing ones."""

    cost: float = 1e-3
    patience: int = 5
    up: float = 2.0
    down: float = 2.0**1.5
    successes: int = 0
    failures: int = 0
    raised: bool = False
    lowered: bool = False

    def update(self, success: bool) -> None:
        """Count one epoch and move the cost when a run of ``patience`` is complete."""
        self.successes, self.failures = (self.successes + 1, 0) if success else (0, self.failures + 1)
        if self.successes >= self.patience:
            self.successes, self.cost, self.raised = 0, self.cost * self.up, True
        elif self.failures >= self.patience:
            self.failures, self.cost, self.lowered = 0, self.cost / self.down, True


def reverse_engineer(model: nn.Module, pixels: Tensor, target: int, to_input=lambda x: x, *,
                     generator: torch.Generator, epochs: int = 80, batch_size: int = 256, lr: float = 0.1,
                     success: float = 0.98, early_stop: float = 0.99, early_patience: int = 25,
                     schedule: CostSchedule | None = None) -> tuple[Tensor, Tensor]:
    """The smallest trigger (mask 1 x H x W, pattern C x H x W) found that sends ``pixels`` to
    ``target`` through the frozen ``model`` (module docstring). One forward and backward per batch."""
    schedule = schedule or CostSchedule()
    n, channels, height, width = pixels.shape
    thetas = [torch.ones(1, height, width, device=pixels.device, requires_grad=True),
              torch.ones(channels, height, width, device=pixels.device, requires_grad=True)]
    opt = torch.optim.Adam(thetas, lr=lr, betas=(0.5, 0.9))
    best, reg_best, stall, stall_best = None, math.inf, 0, math.inf
    for _ in range(epochs):
        hits, regs = torch.zeros((), device=pixels.device), []
        for idx in torch.randperm(n, generator=generator).to(pixels.device).split(batch_size):
            mask, pattern = box(thetas[0]), box(thetas[1])
            logits = run_forward(model, to_input(stamp(pixels[idx], mask, pattern)))
            goal = torch.full((len(idx),), target, device=pixels.device)
            reg = mask.sum()  # the L1 norm: the mask is positive
            loss = F.cross_entropy(logits, goal) + schedule.cost * reg
            # only the thetas' gradients: nothing is computed or stored for the model's weights
            thetas[0].grad, thetas[1].grad = torch.autograd.grad(loss, thetas)
            opt.step()
            hits += (logits.argmax(1) == goal).sum()
            regs.append(reg.detach())
        hit, reg = hits.item() >= success * n, torch.stack(regs).mean().item()
        if hit and reg < reg_best:
            best, reg_best = [box(t).detach() for t in thetas], reg
        if reg_best < math.inf:
            stall = stall + 1 if reg_best >= early_stop * stall_best else 0
        stall_best = min(stall_best, reg_best)
        if schedule.raised and schedule.lowered and stall >= early_patience:
            break
        schedule.update(hit)
    mask, pattern = best or [box(t).detach() for t in thetas]
    return mask, pattern


def _median(x: Tensor) -> Tensor:
    return torch.quantile(x.double(), 0.5)


def anomaly_index(norms: Tensor) -> Tensor:
    """Each class's ``|norm - median| / MAD`` with ``MAD = 1.4826 * median(|norm - median|)``
    (inf where the norm differs from a median that every other norm equals, MAD 0)."""
    deviation = (norms.double() - _median(norms)).abs()
    mad = CONSISTENCY * _median(deviation)
    if mad == 0:
        return torch.where(deviation > 0, math.inf, 0.0).double()
    return deviation / mad


def flagged_labels(norms: Tensor, threshold: float = 2.0) -> list[int]:
    """The classes whose mask norm is at most the median with an anomaly index above
    ``threshold``, smallest norm first (a large norm is never a trigger)."""
    index, median = anomaly_index(norms), _median(norms)
    small = [k for k in range(len(norms)) if norms[k] <= median and index[k] > threshold]
    return sorted(small, key=lambda k: float(norms[k]))


def unlearning_pixels(pixels: Tensor, triggers: list[tuple[Tensor, Tensor]], ratio: float,
                      generator: torch.Generator) -> Tensor:
    """A copy of ``pixels`` where a random ``ratio`` of the samples carry the triggers, split
    evenly between them (the reference's count: n - int(n * (1 - ratio)))."""
    n = len(pixels)
    chosen = torch.randperm(n, generator=generator)[: n - int(n * (1 - ratio))].to(pixels.device)
    out = pixels.clone()
    for part, (mask, pattern) in zip(chosen.tensor_split(len(triggers)), triggers):
        out[part] = stamp(pixels[part], mask, pattern)
    return out


@PURIFIERS.register("nc")
class NeuralCleanse(Purifier):
    name = "nc"
    summary = "Neural Cleanse (Wang et al., S&P 2019): per-class trigger reverse-engineering, MAD test, unlearning of flagged triggers"
    epochs, lr, batch_size = 100, 0.01, 256
    search_epochs, search_batch, search_lr, init_cost = 80, 256, 0.1, 1e-3
    unlearning_ratio = 0.2

    def run(self, job: PurifyJob) -> Purified:
        """Reverse-engineer every class's trigger, flag the outliers, unlearn theirs (module docstring)."""
        with torch.no_grad():
            classes = run_forward(job.reference, job.inputs[:1]).shape[1]
        triggers = [reverse_engineer(job.reference, job.pixels, k, job.to_input, generator=job.generator,
                                     epochs=self.search_epochs, batch_size=self.search_batch, lr=self.search_lr,
                                     schedule=CostSchedule(cost=self.init_cost))
                    for k in range(classes)]
        norms = torch.stack([mask.sum() for mask, _ in triggers]).cpu()
        index = anomaly_index(norms)[int(norms.argmin())].item()
        flagged = flagged_labels(norms)
        metadata = {"nc_flagged": ",".join(map(str, flagged)), "nc_anomaly_index": f"{index:.2f}",
                    "nc_mask_l1": ",".join(f"{v:.2f}" for v in norms.tolist())}
        if not flagged:
            note = f"no class flagged (anomaly index {index:.2f} of the smallest mask, threshold 2): the model is returned unchanged"
            return Purified([f"--repair nc: {note}"], metadata)
        self._unlearn(job, [triggers[k] for k in flagged])
        note = (f"flagged class {', '.join(map(str, flagged))} (anomaly index {index:.2f}); unlearned its reversed trigger "
                f"on {self.unlearning_ratio:.0%} of the samples for {job.epochs} epochs")
        return Purified([f"--repair nc: {note}"], metadata)

    def _unlearn(self, job: PurifyJob, triggers: list[tuple[Tensor, Tensor]]) -> None:
        """Fine-tune ``job.net`` on the samples, a fifth of them stamped with ``triggers``, true labels."""
        inputs = job.to_input(unlearning_pixels(job.pixels, triggers, self.unlearning_ratio, job.generator))
        job.tune(torch.optim.SGD(job.net.parameters(), lr=job.lr, momentum=0.9, weight_decay=5e-4), inputs)
