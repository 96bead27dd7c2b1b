"""What a registered architecture is: :class:`ArchSpec`, the :data:`ARCHS` registry and
the :func:`register_arch` decorator the built-in model modules use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from ..registry import Registry

Factory = Callable[..., nn.Module]
"""``factory(num_classes: int, in_channels: int, **kwargs) -> nn.Module``."""

KwargsHook = Callable[[Mapping[str, Any]], dict]
"""Reads extra factory keyword arguments off a checkpoint's state_dict."""


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to build it and what it eats.

    ``input_shape`` is ``(C, H, W)`` of one input image; ``input_declared`` says whether the
    architecture declares it (built-ins, torchvision, timm, a factory with an ``input_shape``
    attribute) or it is only a default (a user factory without one), which
    :func:`bdprune.scan.check_input` does not hold images to. ``infer_kwargs``, when set, is
    called with a state_dict and returns factory keyword arguments that make the model
    match that checkpoint (e.g. ``{"final_bn": True}``); :func:`build_model` uses it for
    keys the user did not give with ``--arch-arg``.
    """

    name: str
    factory: Factory
    input_shape: tuple[int, int, int] = (3, 32, 32)
    summary: str = ""
    infer_kwargs: KwargsHook | None = None
    input_declared: bool = True


ARCHS: Registry[ArchSpec] = Registry("architecture", list_command="bdprune archs")
"""Built-in architectures by name; ``bdprune archs`` lists them."""


def register_arch(
    name: str,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    summary: str = "",
    *,
    infer_kwargs: KwargsHook | None = None,
) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory`` in :data:`ARCHS` as ``name`` and return it unchanged.

    ``summary`` is the one line ``bdprune archs`` shows; when empty, the first line of the
    factory's docstring is used instead.
    """

    def add(factory: Factory) -> Factory:
        doc_lines = (factory.__doc__ or "").strip().splitlines()
        text = summary or (doc_lines[0] if doc_lines else "")
        spec = ArchSpec(
            name=name,
            factory=factory,
            input_shape=tuple(input_shape),  # type: ignore[arg-type]
            summary=text,
            infer_kwargs=infer_kwargs,
        )
        ARCHS.register(name)(spec)
        return factory

    return add
