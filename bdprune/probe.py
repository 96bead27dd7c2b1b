"""The trigger probe: synthesize, from a few clean samples, the perturbation a backdoor's training
data carried, by asking which perturbation reproduces the BatchNorm running statistics, and see
where it sends clean images. Its cost does not depend on the number of classes.

A backdoored model's running statistics were gathered on training data of which a share ``p``
carried the trigger: they describe the mixture ``(1 - p) * clean + p * triggered`` at every BN
input. :func:`synthesize` looks for one perturbation ``delta``, shared by all images, whose
mixture with the clean statistics best reproduces the running ones (the sum over every BN channel
of ``KL(mixture || running)``, minimized over ``delta`` and ``p`` by a few Adam steps on
``PROBE_IMAGES`` images, at a dense L2 and a sparse L1 budget). Nothing in that search names a
class. Then it applies ``delta`` to other clean images: a backdoor's synthesized trigger sends
most of them to its target class, whereas in a clean model the perturbation that best explains
the statistics (their sampling noise, the training set's own make-up) sends few images anywhere.
The share of images it sends to one class is the verdict's statistic (bdprune.verdict), and the
perturbations are the triggers ``--repair unlearn`` removes (bdprune.repair).

Images are in [0, 1] (pixel space; ``normalize`` is applied at the model's input), so a budget
means the same for every checkpoint: L2 as a root-mean-square change per pixel value, L1 as the
share of all pixel values changed fully.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .methods.bnp import gaussian_kl
from .normalize import Normalization, normalizer
from .progress import progress_bar
from .stats import LayerStats, bn_layers, collect_stats

PROBE_IMAGES = 32  # the perturbation is optimized on these clean images ...
EVAL_IMAGES = 64  # ... and judged on these others
PROBE_STEPS = 9  # Adam steps per budget
BUDGETS = (("l2", 0.2), ("l1", 0.05))  # dense: RMS change per pixel value; sparse: share of pixel values
SPARSE_TOPK = 0.05  # an L1 step moves the 5% of pixel values with the largest gradient
MIX = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # poisoning shares the explained divergence is judged at
START_MIX = 0.05  # where the optimized share p starts
MIX_RANGE = (0.003, 0.5)
VAR_FLOOR = 1e-12

Moments = dict[str, dict[str, Tensor]]
"""Per BN layer: ``mu_b``, ``var_b`` (clean) and ``mu_r``, ``var_r`` (running), float64 on the CPU."""


@dataclass
class Candidate:
    """One synthesized trigger: the perturbation (C x H x W, pixel space), the class it sends the
    judged images to and the ``share`` of them it sends there (their prediction changed to it),
    the share whose prediction changed at all (``flip``), and how much of the network's BN
    divergence a ``mix`` share of images carrying it explains (``explained``, at most 1)."""

    budget: str
    perturbation: Tensor
    target: int
    share: float
    flip: float
    explained: float
    mix: float
    composition: float | None = None  # what the clean images of ``target`` explain (bdprune.verdict fills it in)

    def to_dict(self) -> dict:
        """The numbers (the perturbation left out)."""
        return {"budget": self.budget, "class": self.target, "share": self.share, "flip": self.flip,
                "explained": self.explained, "mix": self.mix, "composition": self.composition}


@dataclass
class ProbeResult:
    """The synthesized triggers, one per budget, and what the probe cost."""

    candidates: list[Candidate]
    images: int  # images the perturbations were optimized on
    judged: int  # other images they were judged on
    seconds: float
    sample: Tensor | None = field(default=None, repr=False)  # one judged clean image (C x H x W), for pictures

    @property
    def best(self) -> Candidate | None:
        """The candidate that sends the largest share of images to one class."""
        return max(self.candidates, key=lambda c: (c.share, c.explained), default=None)


def clean_moments(model: nn.Module, stats: dict[str, LayerStats]) -> Moments:
    """Clean and running moments per BN layer from a statistics pass (``bdprune.stats.collect_stats``
    with ``moments=True``); layers the pass never reached or without running statistics are left out."""
    out = {}
    for name, bn in bn_layers(model):
        st = stats.get(name)
        if st is None or st.count == 0 or st.sum is None or bn.running_mean is None:
            continue
        out[name] = {
            "mu_b": st.mean.double().cpu(), "var_b": st.var.double().clamp_min(VAR_FLOOR).cpu(),
            "mu_r": bn.running_mean.detach().double().cpu(), "var_r": bn.running_var.detach().double().clamp_min(VAR_FLOOR).cpu(),
        }
    return out


def channel_moments(model: nn.Module, images: Tensor, *, device: torch.device | str = "cpu", batch_size: int = 128,
                    normalize: Normalization | None = None) -> Moments:
    """:func:`clean_moments` of a fresh statistics pass over ``images``."""
    stats = collect_stats(model, images, device=torch.device(device), batch_size=batch_size, moments=True,
                          normalize=normalize, show_progress=False)
    return clean_moments(model, stats)


def mixture_kl(clean: Moments, moved: dict[str, tuple[Tensor, Tensor]], p: Tensor | float) -> Tensor:
    """Sum over every BN channel of KL(mixture || running): ``1 - p`` of the clean statistics and
    ``p`` of the ``moved`` ones (mean, variance per layer); the mixture's mean and variance are exact
    (the law of total variance). Differentiable in ``moved`` and ``p``."""
    total = torch.zeros((), dtype=torch.float64)
    for name, m in clean.items():
        mu_t, var_t = moved[name]
        mu = (1 - p) * m["mu_b"] + p * mu_t
        second = (1 - p) * (m["var_b"] + m["mu_b"] ** 2) + p * (var_t + mu_t**2)
        total = total + gaussian_kl(mu, (second - mu**2).clamp_min(VAR_FLOOR), m["mu_r"], m["var_r"]).sum()
    return total


def divergence(clean: Moments) -> float:
    """The network's BN divergence: the sum over every channel of KL(clean || running)."""
    return float(sum(gaussian_kl(m["mu_b"], m["var_b"], m["mu_r"], m["var_r"]).sum() for m in clean.values()))


def clip_pixels(x: Tensor) -> Tensor:
    """``x`` clamped to [0, 1], with the gradient passed wherever 0 <= x <= 1, bounds included.

    torch's own ``clamp`` changed its gradient at the bounds between releases (2.13 passes it,
    2.14 gives 0), and images hold many pixels exactly at 0 or 1 (MNIST's black background): with
    a zero gradient there, no perturbation can start in the background where patch triggers sit,
    and the probe's result would depend on the torch version."""
    inside = ((x >= 0) & (x <= 1)).to(x.dtype)
    return x.clamp(0.0, 1.0).detach() + (x - x.detach()) * inside


def project_l1(v: Tensor, radius: float) -> Tensor:
    """Each row of ``v`` projected on the L1 ball of ``radius`` (Duchi et al. 2008, by sorting)."""
    a = v.abs()
    over = a.sum(1) > radius
    if not bool(over.any()):
        return v
    s, _ = a.sort(1, descending=True)
    cs = s.cumsum(1)
    idx = torch.arange(1, v.shape[1] + 1, dtype=v.dtype, device=v.device)
    rho = ((s - (cs - radius) / idx) > 0).to(v.dtype).cumsum(1).argmax(1, keepdim=True)
    theta = (cs.gather(1, rho) - radius) / (rho + 1).to(v.dtype)
    return torch.where(over[:, None], torch.sign(v) * (a - theta).clamp_min(0), v)


def synthesize(model: nn.Module, images: Tensor, clean: Moments, *, device: torch.device | str = "cpu",
               normalize: Normalization | None = None, steps: int = PROBE_STEPS, budgets: Sequence[tuple[str, float]] = BUDGETS,
               show_progress: bool = False) -> ProbeResult | None:
    """The synthesized triggers of ``model`` (one per budget) from clean ``images`` (N x C x H x W
    in [0, 1]) and their ``clean`` moments (:func:`clean_moments` of a pass over the same images).
    The perturbations are optimized on the first PROBE_IMAGES images and judged on the next
    EVAL_IMAGES (all of them are used for both when there are too few to split). None when no BN
    layer has statistics or the network shows no divergence at all."""
    t0 = time.perf_counter()
    base = divergence(clean)
    if not clean or not base > 0:
        return None
    dev = torch.device(device)
    model = model.eval().to(dev)
    fit, judge = _split(images.to(torch.float32))
    norm = normalizer(normalize, dev)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    candidates = []
    try:
        before = _predict(model, norm, judge.to(dev))
        with progress_bar(len(budgets) * steps, "trigger probe: steps", enabled=show_progress) as advance:
            for kind, budget in budgets:
                delta = _optimize(model, norm, fit.to(dev), clean, base, kind, budget, steps, advance)
                candidates.append(_judge(model, norm, judge.to(dev), before, clean, base, delta, f"{kind}={budget:g}"))
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return ProbeResult(candidates, len(fit), len(judge), time.perf_counter() - t0, judge[0].clone())


def _split(images: Tensor) -> tuple[Tensor, Tensor]:
    """The images to optimize on and the others to judge on."""
    if len(images) >= 2 * PROBE_IMAGES:
        return images[:PROBE_IMAGES], images[PROBE_IMAGES : PROBE_IMAGES + EVAL_IMAGES]
    return images[:PROBE_IMAGES], images[:EVAL_IMAGES]


def _radius(kind: str, budget: float, dim: int) -> float:
    return budget * math.sqrt(dim) if kind == "l2" else budget * dim


def _optimize(model: nn.Module, norm: Callable[[Tensor], Tensor], x: Tensor, clean: Moments, base: float, kind: str,
              budget: float, steps: int, advance: Callable[[int], None]) -> Tensor:
    """The perturbation (flat, pixel space) whose mixture with the clean statistics best reproduces
    the running ones, within the budget: Adam on the perturbation and on the mixing share
    (a sigmoid, kept in MIX_RANGE), each step projected back onto the budget's ball; an L1 step
    moves only the SPARSE_TOPK largest-gradient pixel values (a patch-like change)."""
    n, c, h, w = x.shape
    dim = c * h * w
    radius = _radius(kind, budget, dim)
    delta = torch.zeros(dim, device=x.device, requires_grad=True)
    share = torch.tensor(math.log(START_MIX / (1 - START_MIX)), device=x.device, requires_grad=True)
    step = radius / math.sqrt(dim) / 4 if kind == "l2" else radius / dim
    opt = torch.optim.Adam([delta, share], lr=step)
    topk = max(1, int(SPARSE_TOPK * dim))
    for _ in range(steps):
        moved = _bn_moments(model, norm(clip_pixels(x + delta.view(1, c, h, w))), clean)
        p = torch.sigmoid(share).clamp(*MIX_RANGE).double().cpu()
        loss = mixture_kl(clean, moved, p) / base
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not torch.isfinite(delta.grad).all():
            break
        if kind == "l1":
            with torch.no_grad():
                grad = delta.grad
                grad[grad.abs() < grad.abs().topk(topk).values[-1]] = 0
        opt.step()
        with torch.no_grad():
            if kind == "l2":
                delta *= (radius / delta.norm().clamp_min(1e-12)).clamp(max=1.0)
            else:
                delta.copy_(project_l1(delta.view(1, -1), radius).view(-1))
        advance(1)
    return delta.detach().view(c, h, w)


def _bn_moments(model: nn.Module, x: Tensor, clean: Moments) -> dict[str, tuple[Tensor, Tensor]]:
    """Mean and (biased) variance of every BN input over the batch ``x``, float64 on the CPU,
    differentiable (a forward pre-hook per layer)."""
    moved: dict[str, tuple[Tensor, Tensor]] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            a = inputs[0].double()
            dims = [0] + list(range(2, a.dim()))
            moved[name] = (a.mean(dims).cpu(), a.var(dims, unbiased=False).cpu())

        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in model.named_modules()
               if isinstance(m, _BatchNorm) and name in clean]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return moved


def _predict(model: nn.Module, norm: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(norm(x)).argmax(1)


def _judge(model: nn.Module, norm: Callable[[Tensor], Tensor], x: Tensor, before: Tensor, clean: Moments, base: float,
           delta: Tensor, budget: str) -> Candidate:
    """Where ``delta`` sends the judged images, and the BN divergence a share of them carrying it explains."""
    with torch.no_grad():
        moved_images = (x + delta.unsqueeze(0)).clamp(0.0, 1.0)
        logits = model(norm(moved_images))
        moved = _bn_moments(model, norm(moved_images), clean)
        best_p, best = min(((p, float(mixture_kl(clean, moved, p))) for p in MIX), key=lambda t: t[1])
    after = logits.argmax(1)
    changed = after != before
    counts = torch.bincount(after[changed].cpu(), minlength=logits.shape[1])
    target = int(counts.argmax())
    return Candidate(budget, delta.cpu(), target, float(counts[target]) / len(x), float(changed.float().mean()),
                     1.0 - best / base, best_p)


def composition_explained(model: nn.Module, images: Tensor, classes: Tensor, cls: int, clean: Moments, *,
                          device: torch.device | str = "cpu", normalize: Normalization | None = None) -> float | None:
    """How much of the BN divergence a share of the clean images *of class* ``cls`` explains
    (``classes``: their labels, or the model's predictions). A training set richer in ``cls`` than
    the clean samples (class imbalance) explains the running statistics this way without any
    trigger; a trigger explains them beyond it. None with fewer than MIN_CLASS_IMAGES such images."""
    own = images[classes == cls]
    if len(own) < MIN_CLASS_IMAGES:
        return None
    moments = channel_moments(model, own, device=device, normalize=normalize)
    moved = {name: (m["mu_b"], m["var_b"]) for name, m in moments.items()}
    return 1.0 - min(float(mixture_kl(clean, moved, p)) for p in MIX) / divergence(clean)


MIN_CLASS_IMAGES = 4
