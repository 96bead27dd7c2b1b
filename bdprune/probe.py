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
    sample: Tensor | None = field(default=None, repr=False)  # a judged clean image it sent to ``target`` (C x H x W), for pictures

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
               batch_size: int = 128, show_progress: bool = False) -> ProbeResult | None:
    """The synthesized triggers of ``model`` (one per budget) from clean ``images`` (N x C x H x W
    in [0, 1]) and their ``clean`` moments (:func:`clean_moments` of a pass over the same images).
    The perturbations are optimized on the first PROBE_IMAGES images and judged on the next
    EVAL_IMAGES (all of them are used for both when there are too few to split); their backward
    passes hold at most about 3 MiB of activations per image of ``batch_size`` (:func:`chunk_size`).
    None when no BN layer has statistics or the network shows no divergence at all."""
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
        chunk = chunk_size(model, fit[0].to(dev), clean, batch_size, norm)
        with progress_bar(len(budgets) * steps, "trigger probe: steps", enabled=show_progress) as advance:
            for kind, budget in budgets:
                delta = _optimize(model, norm, fit.to(dev), clean, base, kind, budget, steps, advance, chunk)
                candidates.append(_judge(model, norm, judge.to(dev), before, clean, base, delta, f"{kind}={budget:g}", chunk))
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return ProbeResult(candidates, len(fit), len(judge), time.perf_counter() - t0)


def with_trigger(model: nn.Module, images: Tensor, clean: Moments, found: Candidate, *, device: torch.device | str = "cpu",
                 normalize: Normalization | None = None) -> Moments:
    """``clean`` with ``found``'s trigger mixed in at its share: the statistics a second trigger must
    explain the rest of (a backdoor with two triggers for two targets)."""
    dev = torch.device(device)
    with torch.no_grad():
        moved_images = (images[:PROBE_IMAGES + EVAL_IMAGES].to(dev, torch.float32) + found.perturbation.to(dev).unsqueeze(0)).clamp(0, 1)
        moved = _moments_of(_bn_sums(model.eval().to(dev), normalizer(normalize, dev)(moved_images), clean))
    p = found.mix
    out = {}
    for name, m in clean.items():
        mu_t, var_t = moved[name]
        mu = (1 - p) * m["mu_b"] + p * mu_t
        second = (1 - p) * (m["var_b"] + m["mu_b"] ** 2) + p * (var_t + mu_t**2)
        out[name] = {**m, "mu_b": mu, "var_b": (second - mu**2).clamp_min(VAR_FLOOR)}
    return out


def _split(images: Tensor) -> tuple[Tensor, Tensor]:
    """The images to optimize on and the others to judge on."""
    if len(images) >= 2 * PROBE_IMAGES:
        return images[:PROBE_IMAGES], images[PROBE_IMAGES : PROBE_IMAGES + EVAL_IMAGES]
    return images[:PROBE_IMAGES], images[:EVAL_IMAGES]


def _radius(kind: str, budget: float, dim: int) -> float:
    return budget * math.sqrt(dim) if kind == "l2" else budget * dim


def _optimize(model: nn.Module, norm: Callable[[Tensor], Tensor], x: Tensor, clean: Moments, base: float, kind: str,
              budget: float, steps: int, advance: Callable[[int], None], chunk: int) -> Tensor:
    """The perturbation (pixel space) whose mixture with the clean statistics best reproduces the
    running ones, within the budget: Adam on the perturbation and on the mixing share (a sigmoid,
    kept in MIX_RANGE), each step projected back onto the budget's ball; an L1 step moves only the
    SPARSE_TOPK largest-gradient pixel values (a patch-like change). The gradient is exact however
    the images are split into chunks of ``chunk`` (:func:`_backward`)."""
    n, c, h, w = x.shape
    dim = c * h * w
    radius = _radius(kind, budget, dim)
    delta = torch.zeros(dim, device=x.device, requires_grad=True)
    share = torch.tensor(math.log(START_MIX / (1 - START_MIX)), device=x.device, requires_grad=True)
    step = radius / math.sqrt(dim) / 4 if kind == "l2" else radius / dim
    opt = torch.optim.Adam([delta, share], lr=step)
    topk = max(1, int(SPARSE_TOPK * dim))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _backward(model, lambda part: norm(clip_pixels(part + delta.view(1, c, h, w))), x, share, clean, base, chunk)
        if delta.grad is None or not torch.isfinite(delta.grad).all():
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


def _backward(model: nn.Module, perturbed: Callable[[Tensor], Tensor], x: Tensor, share: Tensor, clean: Moments, base: float,
              chunk: int) -> None:
    """Gradients of the mixture loss (``mixture_kl / base`` at the batch's BN moments) for the
    perturbation and the share. The loss depends on the images only through per-channel sums of
    the BN inputs and their squares, so with several chunks it is exact in two passes: the sums of
    every chunk without gradients, the loss's gradient with respect to those sums, then each
    chunk's sums again with gradients, weighted by it. One chunk's activations are held at a time
    (memory as a statistics pass), for one extra forward pass."""
    p = torch.sigmoid(share).clamp(*MIX_RANGE).double().cpu()
    parts = [x[i : i + chunk] for i in range(0, len(x), chunk)]
    if len(parts) == 1:
        (mixture_kl(clean, _moments_of(_bn_sums(model, perturbed(x), clean)), p) / base).backward()
        return
    with torch.no_grad():
        sums = _add(_bn_sums(model, perturbed(part), clean) for part in parts)
    leaves = {name: (s1.requires_grad_(), s2.requires_grad_(), n) for name, (s1, s2, n) in sums.items()}
    (mixture_kl(clean, _moments_of(leaves), p) / base).backward()
    for part in parts:
        chunk_sums = _bn_sums(model, perturbed(part), clean)
        weighted = sum((leaves[name][0].grad * s1).sum() + (leaves[name][1].grad * s2).sum() for name, (s1, s2, _) in chunk_sums.items())
        weighted.backward()


def _add(many) -> dict[str, tuple[Tensor, Tensor, int]]:
    total: dict[str, tuple[Tensor, Tensor, int]] = {}
    for sums in many:
        for name, (s1, s2, n) in sums.items():
            t = total.get(name)
            total[name] = (s1, s2, n) if t is None else (t[0] + s1, t[1] + s2, t[2] + n)
    return total


def _moments_of(sums: dict[str, tuple[Tensor, Tensor, int]]) -> dict[str, tuple[Tensor, Tensor]]:
    """Mean and biased variance per channel from the sums of values and squares."""
    out = {}
    for name, (s1, s2, n) in sums.items():
        mu = s1 / n
        out[name] = (mu, s2 / n - mu**2)
    return out


def _bn_sums(model: nn.Module, x: Tensor, clean: Moments, logits: list[Tensor] | None = None) -> dict[str, tuple[Tensor, Tensor, int]]:
    """Per BN layer of ``clean``: the sums of its input's values and squares per channel over the
    batch ``x`` and positions (float64 on the CPU, differentiable), and how many values each sums;
    the model's output is appended to ``logits`` when given."""
    sums: dict[str, tuple[Tensor, Tensor, int]] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            a = inputs[0]
            dims = [0] + list(range(2, a.dim()))  # float64 sums without a float64 copy of the activations
            sums[name] = (a.sum(dims, dtype=torch.float64).cpu(), a.square().sum(dims, dtype=torch.float64).cpu(), a.numel() // a.shape[1])

        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in model.named_modules()
               if isinstance(m, _BatchNorm) and name in clean]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    if logits is not None:
        logits.append(out)
    return sums


def chunk_size(model: nn.Module, image: Tensor, clean: Moments, batch_size: int, norm: Callable[[Tensor], Tensor]) -> int:
    """How many images one backward pass of the probe may hold: BYTES_PER_BATCH_IMAGE for each of
    ``batch_size`` images (384 MiB at the default 128), against the activations autograd saves for
    one image's backward pass (the weights it also saves are held anyway and are not counted).
    Measured on one image; at least MIN_CHUNK (smaller batches run slowly) and at most PROBE_IMAGES."""
    held = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved = [0]

    def pack(t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in held:
            saved[0] += t.numel() * t.element_size()
        return t

    x = image.unsqueeze(0).clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _bn_sums(model, norm(x), clean)
    if not saved[0]:
        return PROBE_IMAGES
    return max(MIN_CHUNK, min(PROBE_IMAGES, int(BYTES_PER_BATCH_IMAGE * batch_size / saved[0])))


MIN_CHUNK = 8
BYTES_PER_BATCH_IMAGE = 3 * 2**20  # whole-scan peak RSS within 1.5x a bare pass (benchmarks/RESULTS.md, cost of the verdict)


def _predict(model: nn.Module, norm: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(norm(part)).argmax(1) for part in x.split(EVAL_IMAGES // 4)])


def _judge(model: nn.Module, norm: Callable[[Tensor], Tensor], x: Tensor, before: Tensor, clean: Moments, base: float,
           delta: Tensor, budget: str, chunk: int) -> Candidate:
    """Where ``delta`` sends the judged images, and the BN divergence a share of them carrying it explains."""
    with torch.no_grad():
        moved_images = (x + delta.unsqueeze(0)).clamp(0.0, 1.0)
        logits, sums = [], []
        for part in moved_images.split(chunk):  # held a chunk at a time, as the optimization's passes
            sums.append(_bn_sums(model, norm(part), clean, logits))
        moved = _moments_of(_add(sums))
        best_p, best = min(((p, float(mixture_kl(clean, moved, p))) for p in MIX), key=lambda t: t[1])
    after = torch.cat(logits).argmax(1)
    changed = after != before
    counts = torch.bincount(after[changed].cpu(), minlength=logits[0].shape[1])
    target = int(counts.argmax())
    sent = (changed & (after == target)).nonzero().flatten()
    sample = x[int(sent[0]) if len(sent) else 0].cpu().clone()
    return Candidate(budget, delta.cpu(), target, float(counts[target]) / len(x), float(changed.float().mean()),
                     1.0 - best / base, best_p, sample=sample)


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
