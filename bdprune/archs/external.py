"""Architectures that are not built in: ``torchvision:NAME``, ``timm:NAME``,
``path/to/file.py:factory`` and ``package.module:factory``; plus the ``--arch-arg`` parser.

Loading ``file.py:factory`` or ``package.module:factory`` runs that code: it is the user's
own code, named explicitly on the command line.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import BdpruneError
from .spec import ArchSpec

IMAGENET_SHAPE = (3, 224, 224)
USER_DEFAULT_SHAPE = (3, 32, 32)


def parse_literal(text: str) -> Any:
    """A Python literal (``3``, ``0.5``, ``True``, ``None``, ``[1, 2]``, ``'x'``) or, when
    ``text`` is not one, ``text`` itself as a plain string."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_arch_args(arch_args: Mapping[str, str] | None) -> dict[str, Any]:
    """Convert ``--arch-arg`` values (strings) with :func:`parse_literal`."""
    return {str(k): parse_literal(v) if isinstance(v, str) else v for k, v in (arch_args or {}).items()}


def accepts_kwarg(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` takes keyword ``name`` (directly or through ``**kwargs``)."""
    params = _parameters(factory)
    if params is None:
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _parameters(factory: Callable[..., Any]) -> Mapping[str, inspect.Parameter] | None:
    try:
        return inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None


def resolve_external(arch: str) -> ArchSpec | None:
    """The :class:`ArchSpec` for an external ``arch`` spec, or None when ``arch`` has no
    ``:`` (a built-in name). Raises :class:`BdpruneError` for anything that cannot be found."""
    prefix, sep, rest = arch.partition(":")
    if not sep:
        return None
    if prefix == "torchvision":
        return _torchvision(arch, rest)
    if prefix == "timm":
        return _timm(arch, rest)
    target, _, attr = arch.rpartition(":")
    if not target or not attr.isidentifier():
        raise BdpruneError(
            f"cannot read architecture {arch!r}",
            hint="use a built-in name, torchvision:NAME, timm:NAME, path/to/file.py:factory "
            "or package.module:factory",
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        owner, where = _load_file(target), target
    else:
        owner, where = _import_module(target), target
    factory = getattr(owner, attr, None)
    if factory is None:
        names = [n for n in dir(owner) if not n.startswith("_") and callable(getattr(owner, n))]
        close = difflib.get_close_matches(attr, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else (
            f"callables there: {', '.join(names[:10])}" if names else "it defines no callables")
        raise BdpruneError(f"{where} has no attribute {attr!r}", hint=hint)
    if not callable(factory):
        raise BdpruneError(f"{where}:{attr} is not callable", hint="point at a function that returns an nn.Module")
    return ArchSpec(
        name=arch,
        factory=factory,
        input_shape=tuple(getattr(factory, "input_shape", USER_DEFAULT_SHAPE)),  # type: ignore[arg-type]
        summary=_first_line(factory.__doc__),
        input_declared=hasattr(factory, "input_shape"),
    )


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _import_optional(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name in (None, package):
            raise BdpruneError(
                f"the {package} package is not installed ({package}:NAME architectures need it)",
                hint=f"pip install {package}",
            ) from exc
        raise BdpruneError(f"importing {package} failed: {exc}", hint=f"pip install {package}") from exc
    except Exception as exc:
        raise BdpruneError(
            f"importing {package} failed: {type(exc).__name__}: {exc}",
            hint=f"reinstall it to match torch {_torch_version()}: pip install {package}",
        ) from exc


def _torch_version() -> str:
    import torch

    return torch.__version__


def _torchvision(arch: str, name: str) -> ArchSpec:
    models = _import_optional("torchvision").models
    if not name:
        raise BdpruneError(f"{arch!r} names no model", hint="e.g. torchvision:resnet18")
    if hasattr(models, "list_models"):
        known = models.list_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise BdpruneError(f"torchvision has no model {name!r}",
                               hint=f"did you mean {', '.join(close)}?" if close else None)

    def factory(**kwargs: Any):
        """torchvision.models.get_model(NAME, weights=None, ...)."""
        return models.get_model(name, weights=None, **kwargs)

    return ArchSpec(arch, factory, IMAGENET_SHAPE, f"torchvision model {name} (random init)")


def _timm(arch: str, name: str) -> ArchSpec:
    timm = _import_optional("timm")
    if not name:
        raise BdpruneError(f"{arch!r} names no model", hint="e.g. timm:resnet18")
    if hasattr(timm, "is_model") and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.5)
        raise BdpruneError(f"timm has no model {name!r}",
                           hint=f"did you mean {', '.join(close)}?" if close else None)

    def factory(**kwargs: Any):
        """timm.create_model(NAME, pretrained=False, ...)."""
        return timm.create_model(name, pretrained=False, **kwargs)

    return ArchSpec(arch, factory, IMAGENET_SHAPE, f"timm model {name} (random init)")


def _load_file(target: str) -> Any:
    """Import a .py file as a fresh module; its folder is on sys.path while it runs, so it
    can import its sibling modules."""
    path = Path(target).expanduser()
    if not path.is_file():
        raise BdpruneError("no such file", path=target,
                           hint="the architecture path/to/file.py:factory names a Python file")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    module_name = f"bdprune_user_arch_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BdpruneError("cannot load this file as a Python module", path=target)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    sys.modules[module_name] = module
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise BdpruneError(f"running this file failed: {type(exc).__name__}: {exc}", path=target) from exc
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    return module


def _import_module(target: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise BdpruneError(
                f"no module named {target!r}",
                hint="is it installed or on PYTHONPATH? a file is written path/to/file.py:factory",
            ) from exc
        raise BdpruneError(f"importing {target!r} failed: {exc}") from exc
    except Exception as exc:
        raise BdpruneError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from exc
