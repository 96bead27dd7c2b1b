"""The scan step: load a checkpoint into its architecture, gather the statistics its method
needs, score and flag every BatchNorm channel, and give the checkpoint its verdict.

:func:`scan_loaded` is the one step every scan runs (the fleet's loop over files, the Python API's
in-memory model, the demo); ``prune`` scores through :func:`score_model` too, so a pruned file
always holds exactly the channels a scan with the same settings flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ._version import __version__
from .archs import ArchSpec
from .checkpoint import Checkpoint, load_checkpoint
from .data import ImageSet, check_fits, fit_channels, load_images
from .normalize import check_channels
from .options import Resolved, ScanSettings, check_samples
from .errors import BdpruneError
from .methods import ScoreContext
from .methods.masks import seeded_rng
from .scoring import ScanResult, flag
from .stats import bn_layers, collect_stats, last_linear, run_forward

LARGE_AREA = 4  # images over this many times the declared input area need --image-size


def output_classes(model: nn.Module) -> int | None:
    """Output size of the model's last linear layer, if it has one."""
    head = last_linear(model)
    return head.out_features if head is not None else None


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
        return output_classes(self.model)


def load_with(settings: ScanSettings, path: str | Path) -> LoadedModel:
    """The checkpoint at ``path`` loaded as ``settings`` say (architecture, classes, prefix, pickles)."""
    return load_model(path, settings.require_arch(), num_classes=settings.num_classes, arch_args=settings.arch_args,
                      trust_pickle=settings.trust_pickle, strip_prefix=settings.strip_prefix)


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
    from .options import ARCH_HINT

    if not arch:
        raise BdpruneError("--arch is required", hint=ARCH_HINT)
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
    :func:`bdprune.data.fit_channels`); then the channel count must match. Against the input
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


def score_model(loaded: LoadedModel, data: ImageSet | None, resolved: Resolved, *, show_progress: bool = True) -> ScanResult:
    """Score every BN channel of ``loaded`` with the resolved method and flag at its u (per layer;
    network-wide for bnp+; a bound on the mask for anp and rnp); no verdict. ``data`` should
    already be fitted to the model (:func:`check_input`)."""
    return _score(loaded, data, resolved, show_progress)[0]


def _score(loaded: LoadedModel, data: ImageSet | None, resolved: Resolved, show_progress: bool):
    """:func:`score_model`'s result and its statistics pass (None for methods without one)."""
    method = resolved.method
    _check_model(loaded, method.name)
    notes = list(loaded.checkpoint.notes)
    stats, used = _statistics(loaded, data, resolved, notes, show_progress)
    model = loaded.model.to(resolved.device)
    ctx = ScoreContext(model=model, stats=stats, device=resolved.device, notes=notes, data=data, normalize=resolved.normalize,
                       seed=resolved.seed, show_progress=show_progress)
    try:
        # Learning methods need gradients, and their global-RNG use (dropout) seeded, not the caller's.
        with seeded_rng(resolved.seed, resolved.device) if method.trains else torch.inference_mode():
            raw = resolved.method_options.score(ctx)
            fill = resolved.method_options.fill_values(ctx)
    except BdpruneError as exc:  # e.g. a BN without running statistics: name the checkpoint
        raise exc.with_path(loaded.checkpoint.path) from None
    for layer, scores in raw.items():
        if not torch.isfinite(scores).all():
            raise BdpruneError(
                f"{method.name} scores of {layer} are NaN or infinite",
                path=loaded.checkpoint.path,
                hint="the checkpoint or the data holds NaN/inf values; check both",
            )
    result = ScanResult(
        checkpoint=str(loaded.checkpoint.path),
        arch=loaded.arch,
        method=method.name,
        method_reason=resolved.method_reason,
        u=resolved.u,
        samples=used,
        device=str(resolved.device),
        layers=flag(raw, resolved.u, ranking=method.ranking, low_is_suspicious=method.low_is_suspicious),
        low_is_suspicious=method.low_is_suspicious,
        pruned_params=method.pruned_params,
        notes=notes,
        version=__version__,
        ranking=method.ranking,
        fill=None if fill is None else {name: v.cpu().tolist() for name, v in fill.items()},
        data=str(data.source) if used else None,
    )
    return result, stats


def scan_loaded(loaded: LoadedModel, data: ImageSet | None, resolved: Resolved, *, show_progress: bool = True) -> ScanResult:
    """The scan step: the data fitted to the model (:func:`check_input`), :func:`score_model`,
    then the checkpoint's verdict (bdprune.verdict) on the same samples."""
    from .verdict import assess

    from .probe import clean_moments

    if data is not None and resolved.method.data_role is not None:
        data = check_input(loaded, data)
    result, stats = _score(loaded, data, resolved, show_progress)
    moments = clean_moments(loaded.model, stats) if stats is not None and resolved.method.needs_moments else None
    result.verdict = assess(result, resolved.fail_threshold, model=loaded.model, images=data, normalize=resolved.normalize,
                            device=resolved.device, moments=moments, batch_size=resolved.batch_size, show_progress=show_progress,
                            thorough=resolved.thorough)
    return result


def _check_model(loaded: LoadedModel, method: str) -> None:
    """Refuse a model without BatchNorm layers or with NaN/inf weights."""
    if not bn_layers(loaded.model):
        raise BdpruneError(
            f"the model has no BatchNorm layers: {method} scores BatchNorm channels",
            path=loaded.checkpoint.path,
            hint="bdprune audits BatchNorm networks; check --arch",
        )
    _check_finite_weights(loaded)


def _statistics(loaded: LoadedModel, data: ImageSet | None, resolved: Resolved, notes: list[str], show_progress: bool):
    """The statistics pass the method needs (None for the data-free and learned-mask methods) and
    how many samples were used; appends the data's notes."""
    method = resolved.method
    if method.data_role is None:
        if data is not None:
            notes.append(f"{method.name} is data-free; --data was not used")
        return None, 0
    if data is None:
        raise BdpruneError(
            f"--method {method.name} needs --data with {method.data_role} samples",
            hint="pass --data FILE, or use --method clp (data-free)",
        )
    check_fits(data, loaded.in_channels)
    check_channels(resolved.normalize, int(data.images.shape[1]))
    stats = None
    try:
        if method.needs_moments or method.needs_maxima:
            stats = collect_stats(loaded.model, data.images, device=resolved.device, batch_size=resolved.batch_size,
                                  moments=method.needs_moments, maxima=method.needs_maxima, normalize=resolved.normalize,
                                  show_progress=show_progress)
    except BdpruneError as exc:  # images that do not fit, activations that overflow: name the data
        raise exc.with_path(data.source) from None
    notes += data.notes
    return stats, len(data)
