"""The scan pipeline with plain arguments: load, gather statistics, score, threshold.

``scan`` and ``prune`` both come through :func:`score_model`, so a pruned file always holds
exactly the channels a scan with the same settings flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from . import __version__
from .archs import ArchSpec
from .checkpoint import Checkpoint, load_checkpoint
from .data import ImageSet, check_fits, load_images, parse_normalize
from .errors import BdpruneError
from .imaging import fit_channels
from .methods import METHODS, Method, ScoreContext
from .methods.masks import seeded_rng
from .scoring import ScanResult, flag
from .stats import bn_layers, collect_stats, run_forward

LARGE_AREA = 4  # images over this many times the declared input area need --image-size


@dataclass
class LoadedModel:
    """A model with its checkpoint loaded, and where both came from."""

    model: nn.Module
    checkpoint: Checkpoint
    arch: str
    spec: ArchSpec | None

    @property
    def in_channels(self) -> int | None:
        """Channel count of the first conv layer, if there is one."""
        conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        return None if conv is None else conv.in_channels

    @property
    def num_classes(self) -> int | None:
        """Output size of the last linear layer, if there is one."""
        linear = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        return linear[-1].out_features if linear else None


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise BdpruneError(f"unknown --device {spec!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BdpruneError(f"unsupported --device {spec!r}", hint="use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BdpruneError(f"--device {spec}: no CUDA GPU is available here", hint="use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BdpruneError(
                f"--device {spec}: only {torch.cuda.device_count()} GPU(s)", hint=f"use cuda:0..{torch.cuda.device_count() - 1}"
            )
    return device


def load_model(
    checkpoint_path: str | Path,
    arch: str,
    *,
    num_classes: int | None = None,
    arch_args: Mapping[str, str] | None = None,
    trust_pickle: bool = False,
    strip_prefix: str | None = None,
) -> LoadedModel:
    """Read a checkpoint safely and load it into ``arch``; every mismatch is one clear error.

    The key prefix the model sits under (Lightning's ``model.``, ``module.``, ...) is detected
    by what fits ``arch``, and entries outside it are left out with a note
    (:func:`bdprune.fitting.fit_checkpoint`); ``strip_prefix`` (``--strip-prefix``) names it
    where detection cannot decide."""
    from .fitting import fit_checkpoint

    if not arch:
        raise BdpruneError("--arch is required", hint="pass --arch NAME (`bdprune archs` lists them) or set arch in [tool.bdprune]")
    checkpoint = load_checkpoint(checkpoint_path, trust_pickle=trust_pickle)
    model, spec = fit_checkpoint(checkpoint, arch, num_classes=num_classes, arch_args=arch_args, strip_prefix=strip_prefix)
    return LoadedModel(model.eval(), checkpoint, arch, spec)


def load_samples(path: str | Path, samples: int | None, seed: int, *, image_size: object = None) -> ImageSet:
    """Read a data set and draw ``samples`` of it deterministically; when it holds fewer, all
    of them are used and the returned set's ``notes`` say so. An ImageFolder decodes only the
    files drawn; ``image_size`` (``--image-size``) resizes them (:func:`bdprune.data.load_images`)."""
    check_samples(samples, seed)
    return load_images(path, image_size=image_size, samples=samples, seed=seed)


def check_input(loaded: LoadedModel, data: ImageSet) -> ImageSet:
    """``data`` fitted to ``loaded``, checked before any heavy work; every misfit is one clear error.

    Pictures decoded from files take the model's channel count (RGB <-> L as Pillow converts,
    :func:`bdprune.imaging.fit_channels`); then the channel count must match. Against the input
    size the architecture declares (``ArchSpec.input_shape``; a timm model's ``pretrained_cfg``):
    images of that size pass. Images over :data:`LARGE_AREA` times its area are refused unless
    they were resized on request (``--image-size``, which may name their own size to run them as
    they are): a CIFAR ResNet fed 224x224 pictures does 49x the work, usually by mistake. Any other
    size goes once through the model on one image and is refused when it does not fit, so models
    with a global pool still take other sizes. A size that is only a default (a user factory
    without ``input_shape``) or a model without a spec is not held to anything."""
    data = fit_channels(data, loaded.in_channels)
    check_fits(data, loaded.in_channels)
    spec = loaded.spec
    height, width = (int(v) for v in data.images.shape[-2:])
    if spec is None or not spec.input_declared or (height, width) == tuple(spec.input_shape[1:]):
        return data
    _, want_h, want_w = spec.input_shape
    declared = "x".join(map(str, spec.input_shape))
    ratio = height * width / (want_h * want_w)
    if data.resized is None and ratio > LARGE_AREA:
        raise BdpruneError(
            f"images are {height}x{width}, {ratio:.0f}x the area of the {declared} input --arch {loaded.arch} declares "
            "(as many times the time and memory)",
            path=data.source,
            hint=f"pass --image-size {want_h},{want_w} to resize them, or --image-size {height},{width} to run them at this size",
        )
    param = next(iter(loaded.model.parameters()), None)
    probe = data.images[:1]
    if param is not None:
        probe = probe.to(param.device, param.dtype if param.dtype.is_floating_point else probe.dtype)
    try:
        with torch.inference_mode():
            run_forward(loaded.model, probe)
    except BdpruneError as exc:
        raise BdpruneError(
            f"{exc.message}; --arch {loaded.arch} declares {declared}",
            path=data.source,
            hint=f"pass --image-size {want_h},{want_w} to resize them, or data of the model's input size",
        ) from None
    return data


def check_samples(samples: int | None, seed: int = 0) -> None:
    """Refuse a sample count below 1 and a seed torch's generator cannot take."""
    if samples is not None and samples < 1:
        raise BdpruneError(f"--samples must be at least 1, got {samples}")
    if not -(2**63) <= seed < 2**64:
        raise BdpruneError(f"--seed {seed} is out of range", hint="use an integer between 0 and 2**64-1")


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size below 1."""
    if batch_size < 1:
        raise BdpruneError(f"--batch-size must be at least 1, got {batch_size}")


def choose_method(method: str | None, has_data: bool) -> tuple[type[Method], str]:
    """The method class to run and why it was chosen."""
    if method is not None:
        return METHODS.get(method), "chosen with --method"
    if has_data:
        return METHODS.get("bnp"), "default: --data was given"
    return METHODS.get("clp"), "default: no --data, so the data-free method"


def check_u(u: float) -> float:
    """Refuse a threshold that is not a finite, non-negative number."""
    if not math.isfinite(u) or u < 0:
        raise BdpruneError(f"--u must be a finite number >= 0, got {u}", hint="the paper's default is 3")
    return u


def _check_finite_weights(loaded: LoadedModel) -> None:
    """Refuse NaN/inf in any parameter or BN running statistic, naming the first one: every
    method's scores (and every activation downstream of it) would be meaningless. Other buffers
    are left alone (an attention mask may hold -inf on purpose)."""
    tensors = list(loaded.model.named_parameters())
    for name, bn in bn_layers(loaded.model):
        tensors += [(f"{name}.{what}", getattr(bn, what)) for what in ("running_mean", "running_var") if getattr(bn, what, None) is not None]
    for name, tensor in tensors:
        if not torch.isfinite(tensor.detach()).all():
            raise BdpruneError(
                f"{name} holds NaN or infinite values",
                path=loaded.checkpoint.path,
                hint="the checkpoint is damaged; re-export it from a healthy training run",
            )


def score_model(
    loaded: LoadedModel,
    method: str | None = None,
    *,
    data: ImageSet | None = None,
    u: float | None = None,
    device: str = "auto",
    batch_size: int = 128,
    normalize: str = "none",
    show_progress: bool = True,
    seed: int = 0,
    method_args: Mapping[str, str] | None = None,
) -> ScanResult:
    """Score every BN channel of ``loaded`` with ``method`` and flag at ``u`` (per layer; network-wide
    for bnp+; a bound on the mask for anp and rnp). ``u=None`` takes the method's default;
    ``method_args`` override the method's settings (``--method-arg``); ``seed`` drives the
    learned-mask methods' sampling and noise."""
    method_cls, reason = choose_method(method, data is not None)
    u = method_cls.default_u if u is None else check_u(u)
    check_batch_size(batch_size)
    method_obj = method_cls(method_args)
    dev = resolve_device(device)
    norm = parse_normalize(normalize)
    model = loaded.model
    if not bn_layers(model):
        raise BdpruneError(
            f"the model has no BatchNorm layers: {method_cls.name} scores BatchNorm channels",
            path=loaded.checkpoint.path,
            hint="bdprune audits BatchNorm networks; check --arch",
        )
    _check_finite_weights(loaded)
    notes = list(loaded.checkpoint.notes)
    stats = None
    used = 0
    if method_cls.data_role is not None:
        if data is None:
            raise BdpruneError(
                f"--method {method_cls.name} needs --data with {method_cls.data_role} samples",
                hint="pass --data FILE, or use --method clp (data-free)",
            )
        data = check_input(loaded, data)
        if norm is not None and len(norm[0]) not in (1, data.images.shape[1]):
            raise BdpruneError(f"--normalize has {len(norm[0])} means for {data.images.shape[1]}-channel images")
        try:
            if method_cls.needs_moments or method_cls.needs_maxima:
                stats = collect_stats(
                    model,
                    data.images,
                    device=dev,
                    batch_size=batch_size,
                    moments=method_cls.needs_moments,
                    maxima=method_cls.needs_maxima,
                    normalize=norm,
                    show_progress=show_progress,
                )
        except BdpruneError as exc:  # images that do not fit, activations that overflow: name the data
            raise exc.with_path(data.source) from None
        used = len(data)
        notes += data.notes
    elif data is not None:
        notes.append(f"{method_cls.name} is data-free; --data was not used")
    model.to(dev)
    ctx = ScoreContext(model=model, stats=stats, device=dev, notes=notes, data=data, normalize=norm, seed=seed,
                       show_progress=show_progress)
    try:
        # Learning methods need gradients, and their global-RNG use (dropout) seeded, not the caller's.
        with seeded_rng(seed, dev) if method_cls.trains else torch.inference_mode():
            raw = method_obj.score(ctx)
            fill = method_obj.fill_values(ctx)
    except BdpruneError as exc:  # e.g. a BN without running statistics: name the checkpoint
        raise exc.with_path(loaded.checkpoint.path) from None
    for layer, scores in raw.items():
        if not torch.isfinite(scores).all():
            raise BdpruneError(
                f"{method_cls.name} scores of {layer} are NaN or infinite",
                path=loaded.checkpoint.path,
                hint="the checkpoint or the data holds NaN/inf values; check both",
            )
    layers = flag(raw, u, ranking=method_cls.ranking, low_is_suspicious=method_cls.low_is_suspicious)
    return ScanResult(
        checkpoint=str(loaded.checkpoint.path),
        arch=loaded.arch,
        method=method_cls.name,
        method_reason=reason,
        u=u,
        samples=used,
        device=str(dev),
        layers=layers,
        low_is_suspicious=method_cls.low_is_suspicious,
        pruned_params=method_cls.pruned_params,
        notes=notes,
        version=__version__,
        ranking=method_cls.ranking,
        fill=None if fill is None else {name: v.cpu().tolist() for name, v in fill.items()},
        data=str(data.source) if used else None,
    )
