"""What the learned-mask methods (ANP, RNP) share: one mask per BatchNorm channel on a private
copy of the model, ANP's multiplicative noise, minibatches drawn from the clean samples, and the
forward pass they train through.

A masked BN computes ``BN(x; gamma * m, beta)``; with ANP's noise switched on it computes
``BN(x; gamma * (m + d), beta * (1 + e))``. Both are applied to gamma and beta through torch's
parametrizations, so every BatchNorm1d/2d (and any subclass) is masked without rewriting the
model. The model's own parameters are frozen; only the masks (and ANP's noise) get gradients.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..data import ImageSet
from ..errors import BdpruneError
from ..normalize import Normalization, normalizer
from ..stats import bn_layers, run_forward


class _Coefficient(nn.Module):
    """The parametrization of one BN tensor: gamma -> gamma * (m [+ d]), beta -> beta [* (1 + e)]."""

    def __init__(self, owner: "ChannelMasks", layer: str, param: str):
        super().__init__()
        self.owner, self.layer, self.param = owner, layer, param

    def forward(self, value: Tensor) -> Tensor:
        owner = self.owner
        if self.param == "weight":
            coeff = owner.masks[self.layer]
            if owner.perturbed:
                coeff = coeff + owner.weight_noise[self.layer]
            return value * coeff
        return value * (1 + owner.bias_noise[self.layer]) if owner.perturbed else value


class ChannelMasks:
    """A copy of ``model`` whose BN channels carry learnable masks (initialised to 1).

    ``model`` itself is never modified. ``noise=True`` also creates ANP's perturbations on gamma
    and beta (zero until :meth:`reset_noise`), which only act while ``perturbed`` is set.
    BN layers without affine parameters cannot be masked and are listed in ``skipped``.
    """

    def __init__(self, model: nn.Module, *, device: torch.device, noise: bool = False):
        self.model = copy.deepcopy(model).to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.perturbed = False
        self.masks: dict[str, Tensor] = {}
        self.weight_noise: dict[str, Tensor] = {}
        self.bias_noise: dict[str, Tensor] = {}
        self.skipped: list[str] = []
        for name, bn in bn_layers(self.model):
            if not bn.affine:
                self.skipped.append(name)
                continue
            like = dict(device=bn.weight.device, dtype=bn.weight.dtype)
            self.masks[name] = torch.ones(bn.num_features, **like, requires_grad=True)
            parametrize.register_parametrization(bn, "weight", _Coefficient(self, name, "weight"))
            if noise:
                self.weight_noise[name] = torch.zeros(bn.num_features, **like, requires_grad=True)
                self.bias_noise[name] = torch.zeros(bn.num_features, **like, requires_grad=True)
                parametrize.register_parametrization(bn, "bias", _Coefficient(self, name, "bias"))
        if not self.masks:
            raise BdpruneError("no BatchNorm layer with affine parameters to mask", hint="learned-mask methods need BN gamma")

    def mask_parameters(self) -> list[Tensor]:
        """The masks, one tensor per maskable BN layer."""
        return list(self.masks.values())

    def noise_parameters(self) -> list[Tensor]:
        """ANP's noise tensors (gamma's, then beta's)."""
        return list(self.weight_noise.values()) + list(self.bias_noise.values())

    def reset_noise(self, eps: float, generator: torch.Generator) -> None:
        """Draw every noise value uniformly from [-eps, eps] (ANP's random start)."""
        with torch.no_grad():
            for t in self.noise_parameters():
                t.copy_((torch.rand(t.shape, generator=generator, dtype=t.dtype) * 2 - 1).mul_(eps))

    def clamp_masks(self) -> None:
        """Project every mask back onto [0, 1] (both papers, after each optimiser step)."""
        with torch.no_grad():
            for m in self.masks.values():
                m.clamp_(0.0, 1.0)

    def values(self) -> dict[str, Tensor]:
        """The learned masks as float64 scores on the CPU, keyed by BN layer."""
        return {name: m.detach().to("cpu", torch.float64) for name, m in self.masks.items()}


@dataclass
class LabelledBatches:
    """The clean samples on the device, as the model takes them (normalized), with their labels."""

    images: Tensor
    labels: Tensor
    batch_size: int

    def __len__(self) -> int:
        return len(self.labels)

    def shuffled_epoch(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass in a random order, the last batch possibly smaller (a DataLoader with
        ``shuffle=True``); a last batch of one sample is dropped, since BatchNorm in training
        mode cannot normalise a single value per channel."""
        for idx in self.shuffled_indices(generator):
            yield self.images[idx], self.labels[idx]

    def shuffled_indices(self, generator: torch.Generator) -> Iterator[Tensor]:
        """The sample indices of :meth:`shuffled_epoch`'s batches."""
        order = torch.randperm(len(self), generator=generator).to(self.images.device)
        for start in range(0, len(self), self.batch_size):
            idx = order[start : start + self.batch_size]
            if len(idx) > 1:
                yield idx

    def random_batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A batch drawn with replacement (a RandomSampler with ``replacement=True``)."""
        idx = torch.randint(len(self), (max(2, min(self.batch_size, len(self))),), generator=generator).to(self.images.device)
        return self.images[idx], self.labels[idx]


def labelled_batches(
    data: ImageSet,
    *,
    purpose: str,
    device: torch.device,
    batch_size: int,
    normalize: Normalization | None,
) -> LabelledBatches:
    """Check that ``data`` can be trained on (labels, two or more samples) and put it on ``device``;
    ``purpose`` (e.g. ``--method anp``) names what needs it in the errors."""
    if data.labels is None:
        raise BdpruneError(f"{purpose} learns on labelled clean samples, and this data has no labels",
                           path=data.source, hint="pass an .npz with 'images' and 'labels'")
    if len(data) < 2:
        raise BdpruneError(f"{purpose} needs at least 2 clean samples, got {len(data)}", path=data.source)
    images = normalizer(normalize, device)(data.images.to(device, torch.float32))
    return LabelledBatches(images, data.labels.to(device), batch_size)


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (dropout draws from it) for a training run and restore the caller's
    state afterwards, the CPU's and, on CUDA, the device's."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def cross_entropy(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of ``model`` on a batch, and how many it classified correctly."""
    logits = run_forward(model, images)
    if logits.dim() != 2 or logits.shape[1] <= int(labels.max()):
        raise BdpruneError(f"the model's output {tuple(logits.shape)} does not fit labels up to {int(labels.max())}",
                           hint="pass data whose labels are the model's classes")
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()
