"""Load checkpoints without running code from them, and fit them to an architecture.

Only two decoders ever touch a checkpoint's bytes: safetensors, and ``torch.load`` with
``weights_only=True`` (a restricted unpickler that builds tensors and plain containers and refuses
everything else; bdprune also lets it build ``argparse.Namespace``, the plain attribute bag timm's
train.py saves its arguments in, whose contents it still checks). A full pickle is opened only
when the caller passes ``trust_pickle=True``. A sharded checkpoint (a ``*.index.json`` beside its
shards, :mod:`bdprune.shards`) is read shard by shard with the same two decoders.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .errors import BdpruneError
from .shards import find_index, load_shards, sharded_sha256

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "network", "weights")
COMPILE_AND_PARALLEL_PREFIXES = ("module.", "_orig_mod.")
TRUST_FLAG = "--trust-pickle"


@dataclass
class Checkpoint:
    """A state_dict read from ``path``.

    ``tensors`` keeps the file's own key names; ``prefix`` is what was stripped to get the names
    the architecture uses (``module.``, ``_orig_mod.``, or what :func:`bdprune.fitting.fit_checkpoint`
    chose, e.g. Lightning's ``model.``), and ``wrapper_key`` the dict key the state_dict sat under,
    if any. Entries outside ``prefix`` (:attr:`outside`) are not part of the model.
    """

    path: Path
    tensors: dict[str, Tensor]
    prefix: str = ""
    wrapper_key: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model_state(self) -> dict[str, Tensor]:
        """The entries under the prefix, with the prefix removed: the names the architecture uses."""
        n = len(self.prefix)
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(self.prefix)}

    @property
    def outside(self) -> list[str]:
        """The file's keys that are not under the prefix (a loss's weight, a teacher copy): never loaded."""
        return [k for k in self.tensors if not k.startswith(self.prefix)]

    def file_key(self, model_key: str) -> str:
        """The file's key name for an architecture key name."""
        return self.prefix + model_key


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks; for a sharded checkpoint (its index
    or the folder holding it), of the index followed by its shards (:func:`bdprune.shards.sharded_sha256`)."""
    import hashlib

    try:
        index = find_index(path)
    except BdpruneError:  # a folder of several indexes is no one checkpoint: hashing it fails below
        index = None
    if index is not None:
        return sharded_sha256(index)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Checkpoint:
    """Read a checkpoint file into a :class:`Checkpoint`, executing nothing from it.

    ``path`` is a file, or a sharded checkpoint: its ``*.index.json`` or the folder holding it,
    whose shards are read and merged. Of a dict wrapping several state_dicts the one under the
    first of :data:`WRAPPER_KEYS` is used (timm's ``state_dict`` over ``state_dict_ema``) and a
    note names the others."""
    path = Path(path)
    try:
        index = find_index(path)
        if index is not None:
            _check_readable(index)
            raw: object = load_shards(index, lambda shard: _unwrap(_read_file(shard, trust_pickle), shard)[0])
        else:
            raw = _read_file(path, trust_pickle)
    except OSError as exc:  # a name too long, an I/O error, a file that vanished: still the user's path
        raise BdpruneError(f"cannot be read ({exc.strerror or exc})", path=path, hint="check the path") from None
    tensors, wrapper_key, unused = _unwrap(raw, path)
    notes = []
    if wrapper_key is not None:
        notes.append(f"using the state_dict under key {wrapper_key!r}")
    if unused:
        notes.append(f"{', '.join(map(repr, unused))} {'was' if len(unused) == 1 else 'were'} not used")
    prefix = _common_prefix(tensors)
    if prefix:
        notes.append(f"stripping key prefix {prefix!r}")
    return Checkpoint(path=path, tensors=tensors, prefix=prefix, wrapper_key=wrapper_key, notes=notes)


def _read_file(path: Path, trust_pickle: bool) -> object:
    _check_readable(path)
    if path.stat().st_size == 0:
        raise BdpruneError("the file is empty", path=path, hint="pass a non-empty checkpoint")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _load_safetensors(path)
    return _load_torch(path, trust_pickle=trust_pickle)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise BdpruneError("no such file", path=path, hint="check the path")
    if path.is_dir():
        raise BdpruneError(
            "is a directory, not a checkpoint file",
            path=path,
            hint="pass the .pt/.safetensors file inside it, or a folder holding a sharded checkpoint's *.index.json",
        )
    if not os.access(path, os.R_OK):
        raise BdpruneError("permission denied", path=path, hint="make the file readable (chmod u+r)")


def _looks_like_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length and then '{'.
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own and OS errors for corrupt files
        raise BdpruneError(
            f"not a valid safetensors file ({_first_line(exc)})", path=path, hint="the file is corrupt or truncated; re-export it"
        ) from None


def _load_torch(path: Path, *, trust_pickle: bool) -> object:
    try:
        with warnings.catch_warnings(), _harmless_globals():  # torch warns about pickle protocols; the user cannot act on it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        message = _first_line(exc)
        if not trust_pickle and _refused_by_safe_unpickler(exc):
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" (it names {found.group(1)})" if found else ""
            raise BdpruneError(
                f"holds Python objects beyond tensors (a pickled model or custom classes){what}; bdprune refused to unpickle them",
                path=path,
                hint=f"save model.state_dict() instead, or pass {TRUST_FLAG} if you trust this file: unpickling can run code",
            ) from None
        raise BdpruneError(
            f"cannot be read as a PyTorch checkpoint ({message})", path=path, hint="the file is corrupt, truncated or not a checkpoint"
        ) from None
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    return obj


def _harmless_globals():
    """Let the weights-only unpickler build ``argparse.Namespace`` (an attribute bag: constructing
    one runs no code, and everything inside it is still checked), for this load only."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    return scoped([argparse.Namespace]) if scoped is not None else _allowed_for_this_load([argparse.Namespace])


@contextlib.contextmanager
def _allowed_for_this_load(classes: list[type]):
    """torch 2.4 has only the process-wide allowlist: add to it, then put back what was there."""
    serialization = torch.serialization
    before = list(serialization.get_safe_globals())  # torch 2.4 returns its own list, which adding extends
    serialization.add_safe_globals(classes)
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(before)


def _refused_by_safe_unpickler(exc: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused something (a class, a function, an opcode
    it does not know) rather than the file being damaged."""
    text = str(exc).lower()
    return isinstance(exc, pickle.UnpicklingError) and (
        "weights only load failed" in text or "weights_only" in text or "unsupported global" in text
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else ""
    if not any(c.isalpha() for c in line):  # KeyError(101), OSError() ...: the type says more
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line[:200]


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and any(isinstance(v, Tensor) for v in obj.values())


def _unwrap(obj: object, path: Path) -> tuple[dict[str, Tensor], str | None, list[str]]:
    """(tensors, the key they sat under or None, the other tensor dicts left unused)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise BdpruneError(
            f"holds a {type(obj).__name__}, not a state_dict", path=path, hint="save model.state_dict() and pass that file"
        )
    if all(isinstance(v, Tensor) for v in obj.values()) and obj:
        return _tensors_only(obj, path), None, []
    nested = [k for k, v in obj.items() if _is_tensor_dict(v)]
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if _is_tensor_dict(inner):
            return _tensors_only(inner, path), key, [str(k) for k in nested if k != key]
    if len(nested) == 1:
        return _tensors_only(obj[nested[0]], path), str(nested[0]), []
    if len(nested) > 1:
        raise BdpruneError(
            f"holds several tensor dicts ({', '.join(map(str, nested[:4]))}) and none is called state_dict",
            path=path,
            hint="save the model's state_dict alone",
        )
    if _is_tensor_dict(obj):
        return _tensors_only(obj, path), None, []
    raise BdpruneError("holds no tensors", path=path, hint="pass a checkpoint saved with torch.save(model.state_dict(), ...)")


def _tensors_only(obj: Mapping, path: Path) -> dict[str, Tensor]:
    out = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not out:
        raise BdpruneError("holds no tensors", path=path, hint="pass a checkpoint saved with torch.save(model.state_dict(), ...)")
    for name, tensor in out.items():
        _check_plain_tensor(name, tensor, path)
    return out


def _check_plain_tensor(name: str, tensor: Tensor, path: Path) -> None:
    """Refuse tensors a state_dict cannot be loaded from: nested, sparse, quantized, meta (no
    data) or complex ones. Any real dtype is fine; loading casts it to the model's."""
    if tensor.is_nested:
        problem = "is a nested tensor"
    elif tensor.layout != torch.strided:
        problem = f"has layout {str(tensor.layout).replace('torch.', '')}"
    elif tensor.is_quantized:
        problem = "is quantized"
    elif tensor.is_meta:
        problem = "is a meta tensor (it holds no data)"
    elif tensor.is_complex():
        problem = f"is complex ({str(tensor.dtype).replace('torch.', '')})"
    else:
        return
    raise BdpruneError(
        f"tensor {name!r} {problem}; bdprune reads dense real-valued tensors",
        path=path,
        hint="save a plain state_dict (dequantize() / to_dense() the tensors first)",
    )


def _common_prefix(tensors: Mapping[str, Tensor]) -> str:
    prefix = ""
    keys = list(tensors)
    while True:
        for candidate in COMPILE_AND_PARALLEL_PREFIXES:
            if keys and all(k.startswith(prefix + candidate) for k in keys):
                prefix += candidate
                break
        else:
            return prefix


@dataclass
class Mismatch:
    """How a state_dict differs from the one a model expects (``num_batches_tracked`` may be missing)."""

    missing: list[str]
    unexpected: list[str]
    misshaped: list[str]

    @property
    def fits(self) -> bool:
        """Every expected key is there with its shape, and nothing else is."""
        return not (self.missing or self.unexpected or self.misshaped)

    @property
    def covers(self) -> bool:
        """Every expected key is there with its shape (there may be more)."""
        return not (self.missing or self.misshaped)

    def describe(self) -> str:
        """``"2 missing: a, b; 1 unexpected: c"``: the first three of each kind, the rest counted."""
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected), ("mis-shaped", self.misshaped)):
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        return "; ".join(parts)


def key_mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> Mismatch:
    """Compare ``state`` with a model's ``expected`` state_dict by name and shape."""
    return Mismatch(
        missing=[k for k in expected if k not in state and not k.endswith("num_batches_tracked")],
        unexpected=[k for k in state if k not in expected],
        misshaped=[
            f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected if k in state and state[k].shape != expected[k].shape
        ],
    )


def fit_to_model(model: nn.Module, checkpoint: Checkpoint, *, arch: str, suggestion: str | None = None) -> None:
    """Load ``checkpoint`` (its entries under the prefix) into ``model`` strictly; on any mismatch
    raise one clear error, naming ``suggestion`` (another ``--arch`` the keys fit) when given.

    A missing ``num_batches_tracked`` is tolerated (many exporters drop it); everything else must
    match by name and shape.
    """
    state = checkpoint.model_state
    expected = model.state_dict()
    mismatch = key_mismatch(expected, state)
    if not mismatch.fits:
        classifier_only = not mismatch.missing and not mismatch.unexpected and all(_is_classifier_key(m) for m in mismatch.misshaped)
        hint = (
            "pass --num-classes to match the checkpoint's classifier"
            if classifier_only
            else "is --arch right? `bdprune archs` lists them; --num-classes and --arch-arg adjust a family"
        )
        under = f" (keys under {checkpoint.prefix!r})" if checkpoint.prefix else ""
        also = ""
        if suggestion:
            also = f"; its keys fit --arch {suggestion}"
            hint = f"pass --arch {suggestion}; `bdprune archs` lists the built-ins; --num-classes and --arch-arg adjust a family"
        raise BdpruneError(f"does not fit --arch {arch}{under}: {mismatch.describe()}{also}", path=checkpoint.path, hint=hint)
    merged = dict(expected)
    merged.update({k: v for k, v in state.items()})
    try:
        model.load_state_dict(merged, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        detail = re.sub(r"^Error\(s\) in loading state_dict for \w+:\s*", "", str(exc).strip())
        raise BdpruneError(
            f"cannot be loaded into --arch {arch} ({detail[:200]})", path=checkpoint.path, hint="re-export a plain float state_dict"
        ) from None


def _is_classifier_key(text: str) -> bool:
    name = text.split(" ", 1)[0]
    return name.rsplit(".", 1)[0].split(".")[-1] in {"linear", "fc", "fc2", "classifier", "head"} or "classifier" in name
