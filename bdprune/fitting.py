"""Fit a checkpoint's keys to an architecture: choose the key prefix its model sits under, leave
out what is not the model, and on a mismatch name another architecture the keys fit.

Training frameworks nest the model's state_dict under a prefix: Lightning under the attribute
the LightningModule holds it in (``model.``, ``net.``, ``backbone.``), Hugging Face under the
base model's name, DataParallel and ``torch.compile`` under ``module.`` / ``_orig_mod.``; beside
it sit entries that are not the model (``criterion.weight``, ``loss_fn.pos_weight``, a teacher's
``ema.`` copy). The prefix is chosen by what fits: the one that makes every key the built model
expects present with its shape. Only entries outside the chosen prefix are left out; one inside
it that the model does not have is still an error. Two prefixes that both fit are ambiguous
(``--strip-prefix`` decides), so a second copy of the weights is never chosen silently.
"""

from __future__ import annotations

import importlib
import re
from typing import Mapping

import torch
from torch import Tensor, nn

from .archs import ARCHS, ArchSpec, build_model
from .checkpoint import Checkpoint, fit_to_model, key_mismatch
from .errors import BdpruneError

PREFIX_NOTE = "stripping key prefix"
MAX_DEPTH = 3  # candidate prefixes have at most this many dotted parts (model.model.backbone.)
MAX_FAMILY = 8  # torchvision models of the same family tried for a suggestion


def fit_checkpoint(
    checkpoint: Checkpoint,
    arch: str,
    *,
    num_classes: int | None = None,
    arch_args: Mapping[str, str] | None = None,
    strip_prefix: str | None = None,
) -> tuple[nn.Module, ArchSpec]:
    """Build ``arch`` for ``checkpoint`` and load the weights into it; return ``(model, spec)``.

    ``strip_prefix`` None detects the prefix (above); a string (``""`` included) is used as it is.
    Sets ``checkpoint.prefix`` and adds notes on what was stripped and left out. Every failure is
    one :class:`BdpruneError`; a key mismatch names another registered architecture whose keys
    the checkpoint fits, when there is one (looked for only then)."""
    build_args = dict(num_classes=num_classes, arch_args=dict(arch_args or {}))
    if strip_prefix is not None:
        if not any(k.startswith(strip_prefix) for k in checkpoint.tensors):
            heads = sorted({k.split(".", 1)[0] + "." for k in checkpoint.tensors if "." in k})
            raise BdpruneError(
                f"no key starts with --strip-prefix {strip_prefix!r}",
                path=checkpoint.path,
                hint=f"its keys start with {', '.join(map(repr, heads[:6])) or 'no dotted prefix'}",
            )
        _use_prefix(checkpoint, strip_prefix, "--strip-prefix")
        model, spec = build_model(arch, checkpoint.model_state, **build_args)
    else:
        model, spec = _detect(checkpoint, arch, build_args)
    mismatch = key_mismatch(model.state_dict(), checkpoint.model_state)
    # Another architecture is worth naming only when the key names differ, not just shapes.
    renamed = mismatch.missing or mismatch.unexpected
    fit_to_model(model, checkpoint, arch=arch, suggestion=other_fit(checkpoint.model_state, arch) if renamed else None)
    _note_outside(checkpoint, arch)
    return model, spec


def _detect(checkpoint: Checkpoint, arch: str, build_args: dict) -> tuple[nn.Module, ArchSpec]:
    """The model built under the prefix that fits (see the module docstring); on no fit, the one
    whose prefix covers the most expected keys, for the error to describe."""
    first = checkpoint.prefix  # module./_orig_mod. shared by every key, as found by load_checkpoint
    model, spec = build_model(arch, checkpoint.model_state, **build_args)
    if key_mismatch(model.state_dict(), checkpoint.model_state).fits:
        return model, spec
    wanted = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    coverage = {p: sum(p + k in checkpoint.tensors for k in wanted) for p in {first, *candidate_prefixes(checkpoint.tensors)}}
    tried = sorted((p for p, n in coverage.items() if n and 2 * n >= len(wanted)), key=lambda p: (-coverage[p], len(p), p))
    fitting: dict[str, tuple[nn.Module, ArchSpec]] = {}
    for prefix in tried:
        _use_prefix(checkpoint, prefix, None)
        built = (model, spec) if prefix == first else build_model(arch, checkpoint.model_state, **build_args)
        if key_mismatch(built[0].state_dict(), checkpoint.model_state).covers:
            fitting[prefix] = built
    if len(fitting) > 1:
        ordered = sorted(fitting, key=lambda p: (len(p), p))
        raise BdpruneError(
            f"fits --arch {arch} under several key prefixes ({', '.join(map(repr, ordered))}): which entries are the model is ambiguous",
            path=checkpoint.path,
            hint="pass the one to load: " + " or ".join(f"--strip-prefix {p or repr('')}" for p in ordered),
        )
    if fitting:
        [(prefix, built)] = fitting.items()
    else:  # nothing fits: describe the mismatch under the prefix that comes closest
        prefix = max(coverage, key=lambda p: (coverage[p], p == first))
        built = (model, spec) if prefix == first else None
    _use_prefix(checkpoint, prefix, None)
    return built if built is not None else build_model(arch, checkpoint.model_state, **build_args)


def candidate_prefixes(keys) -> set[str]:
    """Every dotted head of the keys up to :data:`MAX_DEPTH` parts (``model.``, ``model.model.``, ...)."""
    out = set()
    for key in keys:
        parts = key.split(".")[:-1]
        for depth in range(1, min(MAX_DEPTH, len(parts)) + 1):
            out.add(".".join(parts[:depth]) + ".")
    return out


def _use_prefix(checkpoint: Checkpoint, prefix: str, how: str | None) -> None:
    checkpoint.prefix = prefix
    checkpoint.notes[:] = [n for n in checkpoint.notes if not n.startswith(PREFIX_NOTE)]
    if prefix:
        checkpoint.notes.append(f"{PREFIX_NOTE} {prefix!r}" + (f" ({how})" if how else ""))


def _note_outside(checkpoint: Checkpoint, arch: str) -> None:
    outside = checkpoint.outside
    if outside:
        more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        checkpoint.notes.append(
            f"ignoring {len(outside)} entr{'y' if len(outside) == 1 else 'ies'} outside {checkpoint.prefix!r} that --arch {arch} "
            f"does not use: {', '.join(outside[:3])}{more}"
        )


def other_fit(state: Mapping[str, Tensor], arch: str) -> str | None:
    """Another architecture whose key names are exactly ``state``'s (``num_batches_tracked`` aside),
    each built on the meta device with the settings the checkpoint implies: the other built-ins,
    and ``torchvision:``/``timm:`` models of the same name (torchvision: the same family too) when
    those packages import. Several are joined with " or "; None when none fits."""
    names = _trim(state)
    fits = [candidate for candidate in _alternatives(arch) if _key_names(candidate, state) == names]
    return " or ".join(fits[:3]) or None


def _key_names(arch: str, state: Mapping[str, Tensor]) -> set[str] | None:
    """``arch``'s state_dict key names when built for ``state``: on the meta device (no memory, no
    init cost); an external model whose construction needs real tensors (timm's ``.item()`` on
    drop-path rates) once more on the CPU. None when it cannot be built for these weights."""
    for device in ("meta", "cpu") if ":" in arch else ("meta",):
        try:
            with torch.device(device):
                model, _ = build_model(arch, state)
            return _trim(model.state_dict())
        except Exception:
            continue
    return None


def _trim(state: Mapping[str, object]) -> set[str]:
    return {k for k in state if not k.endswith("num_batches_tracked")}


def _alternatives(arch: str) -> list[str]:
    bare = arch.partition(":")[2] if arch.startswith(("torchvision:", "timm:")) else arch
    out = [name for name in ARCHS.names() if name != arch]
    models = _optional("torchvision")
    if models is not None and hasattr(models, "models") and hasattr(models.models, "list_models"):
        family = re.match(r"[a-z_]+", bare)
        known = models.models.list_models()
        same = [n for n in known if n == bare] + [n for n in known if family and n != bare and n.startswith(family.group(0))]
        out += [f"torchvision:{n}" for n in same[:MAX_FAMILY]]
    timm = _optional("timm")
    if timm is not None and getattr(timm, "is_model", lambda name: False)(bare):
        out.append(f"timm:{bare}")
    return [name for name in out if name != arch]


def _optional(package: str):
    """``package`` if it imports cleanly, else None (never an error: it is only a suggestion)."""
    try:
        return importlib.import_module(package)
    except Exception:
        return None
