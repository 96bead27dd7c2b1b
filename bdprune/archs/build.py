""":func:`build_model`: an architecture name plus (optionally) a checkpoint's state_dict in,
a freshly initialised model of the matching shape out."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from torch import Tensor, nn

from ..errors import BdpruneError
from .external import _parameters, accepts_kwarg, parse_arch_args, resolve_external
from .spec import ARCHS, ArchSpec

DEFAULT_NUM_CLASSES = 10


def build_model(
    arch: str,
    state_dict: Mapping[str, Tensor] | None,
    num_classes: int | None = None,
    arch_args: Mapping[str, str] | None = None,
) -> tuple[nn.Module, ArchSpec]:
    """Build ``arch`` in eval mode and return ``(model, spec)``. The weights are NOT loaded.

    ``arch`` is a built-in name (see :data:`ARCHS`), ``torchvision:NAME``, ``timm:NAME``,
    ``path/to/file.py:factory`` or ``package.module:factory``. ``arch_args`` are the
    ``--arch-arg key=value`` strings, converted with :func:`parse_literal` and passed to the
    factory as keyword arguments (``num_classes``/``in_channels`` given there count as if
    given directly).

    With ``state_dict`` (keys already stripped of ``module.``/``_orig_mod.``), an unknown
    ``num_classes`` is read off the last Linear layer (or last Conv2d when there is none)
    and, for built-ins, ``in_channels`` off the first Conv2d, plus whatever the built-in's
    ``infer_kwargs`` reads (e.g. width, a final BN). External factories get ``num_classes``
    only when it is known and they take it. The returned spec's ``input_shape`` has the
    built model's input channel count, and the height and width of the model's own
    ``pretrained_cfg`` / ``default_cfg`` ``input_size`` where it has one (timm models do).
    """
    spec = resolve_external(arch)
    builtin = spec is None
    if spec is None:
        spec = ARCHS.get(arch)
    kwargs = parse_arch_args(arch_args)
    num_classes = _take_int(kwargs, "num_classes", num_classes, arch)
    in_channels = _take_int(kwargs, "in_channels", None, arch) if builtin else None
    _check_kwargs(spec, kwargs)
    user_args = bool(kwargs)
    if builtin and state_dict is not None and spec.infer_kwargs is not None:
        for key, value in spec.infer_kwargs(state_dict).items():
            kwargs.setdefault(key, value)
    takes_classes = builtin or accepts_kwarg(spec.factory, "num_classes")

    def make(classes: int | None, channels: int | None) -> nn.Module:
        call = dict(kwargs)
        if classes is not None and takes_classes:
            call["num_classes"] = classes
        if builtin:
            call["in_channels"] = channels
        return _call(spec, call, user_args)

    default_channels = spec.input_shape[0]
    want_classes = num_classes is None and state_dict is not None
    want_channels = builtin and in_channels is None and state_dict is not None
    if want_classes or want_channels:
        probe_classes = DEFAULT_NUM_CLASSES if num_classes is None else num_classes
        probe_channels = default_channels if in_channels is None else in_channels
        model = make(probe_classes, probe_channels)
        assert state_dict is not None
        if want_classes:
            num_classes = _dim(state_dict, _last_head(model), 0) or DEFAULT_NUM_CLASSES
        if want_channels:
            in_channels = _dim(state_dict, _first_conv(model), 1) or default_channels
        if (takes_classes and num_classes != probe_classes) or (
            builtin and in_channels != probe_channels
        ):
            model = make(num_classes, in_channels)
    else:
        model = make(num_classes, default_channels if in_channels is None else in_channels)

    declared = _declared_input_size(model)
    if declared is not None:
        spec = dataclasses.replace(spec, input_shape=(spec.input_shape[0], *declared), input_declared=True)
    first = _first_conv(model)
    if first is not None:
        channels = model.get_submodule(first).in_channels
        spec = dataclasses.replace(spec, input_shape=(channels, *spec.input_shape[1:]))
    return model.eval(), spec


def _declared_input_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) of ``model.pretrained_cfg["input_size"]`` (or ``default_cfg``), as timm sets them."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
        if isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size):
            return int(size[1]), int(size[2])
    return None


def _take_int(kwargs: dict[str, Any], key: str, given: int | None, arch: str) -> int | None:
    """Pop ``key`` from the arch args; it must be a positive int and agree with ``given``."""
    if key not in kwargs:
        return given
    value = kwargs.pop(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BdpruneError(f"--arch-arg {key}={value!r} is not a positive integer")
    if given is not None and given != value:
        raise BdpruneError(f"{key} is given twice for {arch!r}: {given} and {value}")
    return value


def _check_kwargs(spec: ArchSpec, kwargs: Mapping[str, Any]) -> None:
    """Unknown ``--arch-arg`` keys are an error unless the factory takes ``**kwargs``."""
    params = _parameters(spec.factory)
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        takes = ", ".join(n for n in params if n not in ("num_classes", "in_channels")) or "nothing"
        raise BdpruneError(
            f"architecture {spec.name!r} takes no argument {', '.join(map(repr, unknown))}",
            hint=f"its --arch-arg keys: {takes}",
        )


def _call(spec: ArchSpec, kwargs: dict[str, Any], user_args: bool) -> nn.Module:
    try:
        model = spec.factory(**kwargs)
    except BdpruneError:
        raise
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise BdpruneError(
            f"building {spec.name!r} with {shown or 'no arguments'} failed: {type(exc).__name__}: {exc}",
            hint="check the --arch-arg values" if user_args else None,
        ) from exc
    if not isinstance(model, nn.Module):
        raise BdpruneError(
            f"architecture {spec.name!r} returned {type(model).__name__}, not a torch nn.Module"
        )
    return model


def _last_head(model: nn.Module) -> str | None:
    """Name of the last nn.Linear in ``named_modules()`` order, else of the last nn.Conv2d."""
    linear = conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linear = name
        elif isinstance(module, nn.Conv2d):
            conv = name
    return linear if linear is not None else conv


def _first_conv(model: nn.Module) -> str | None:
    """Name of the first nn.Conv2d in ``named_modules()`` order."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _dim(state_dict: Mapping[str, Any], module: str | None, axis: int) -> int | None:
    """``state_dict[module + '.weight'].shape[axis]``, or None when that is not there."""
    if module is None:
        return None
    shape = getattr(state_dict.get(f"{module}.weight" if module else "weight"), "shape", None)
    if shape is None or len(shape) <= axis:
        return None
    return int(shape[axis])
