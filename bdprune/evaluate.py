"""Clean accuracy (ACC) and attack success rate (ASR) of a model on image sets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .data import ImageSet
from .errors import BdpruneError
from .normalize import Normalization, normalizer
from .stats import run_forward


def predict(
    model: nn.Module,
    images: Tensor,
    *,
    device: torch.device,
    batch_size: int = 256,
    normalize: Normalization | None = None,
) -> Tensor:
    """Arg-max class of every image (N x C x H x W in [0, 1]), in eval mode, on ``device``."""
    model.eval().to(device)
    norm = normalizer(normalize, device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out.append(run_forward(model, norm(images[start : start + batch_size].to(device))).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Share of predictions equal to the labels, in percent."""
    if len(labels) == 0:
        raise BdpruneError("no labelled images to measure accuracy on")
    return 100.0 * float((predictions == labels).double().mean())


def attack_success_rate(predictions: Tensor, target: int, true_labels: Tensor | None = None) -> tuple[float, int]:
    """Share (percent) of triggered images predicted as ``target``, leaving out those whose true
    label is already ``target`` when the true labels are known; also returns how many counted."""
    keep = torch.ones_like(predictions, dtype=torch.bool) if true_labels is None else true_labels != target
    counted = int(keep.sum())
    if counted == 0:
        raise BdpruneError(f"no triggered images with a true label other than the target {target}")
    return 100.0 * float((predictions[keep] == target).double().mean()), counted


@dataclass
class EvalResult:
    """ACC on clean images and, when a trigger or poisoned set was given, ASR."""

    checkpoint: str
    acc: float
    n_clean: int
    asr: float | None = None
    n_triggered: int = 0
    target: int | None = None
    trigger: str | None = None


def evaluate_model(
    model: nn.Module,
    clean: ImageSet,
    *,
    checkpoint: str,
    target: int | None = None,
    trigger=None,
    poisoned: ImageSet | None = None,
    device: torch.device,
    batch_size: int = 256,
    normalize=None,
) -> EvalResult:
    """ACC on ``clean``; ASR on ``clean`` with ``trigger`` applied, or on the ``poisoned`` set."""
    if clean.labels is None:
        raise BdpruneError("clean data has no labels", path=clean.source, hint="ACC needs an 'labels' array or class folders")
    kwargs = dict(device=device, batch_size=batch_size, normalize=normalize)
    try:
        acc = accuracy(predict(model, clean.images, **kwargs), clean.labels)
    except BdpruneError as exc:  # images that do not fit the model: name the data file
        raise exc.with_path(clean.source) from None
    result = EvalResult(checkpoint=checkpoint, acc=acc, n_clean=len(clean), target=target)
    if trigger is None and poisoned is None:
        return result
    if target is None:
        raise BdpruneError("ASR needs --target, the attack's target label")
    if trigger is not None:
        triggered, true_labels = trigger.apply(clean.images), clean.labels
        result.trigger = trigger.describe()
    else:
        triggered = poisoned.images
        true_labels = None if poisoned.extra is None else poisoned.extra.get("true_labels")
        result.trigger = f"poisoned set {poisoned.source}"
    try:
        result.asr, result.n_triggered = attack_success_rate(predict(model, triggered, **kwargs), target, true_labels)
    except BdpruneError as exc:
        raise exc.with_path(clean.source if trigger is not None else poisoned.source) from None
    return result
