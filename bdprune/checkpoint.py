"""Load checkpoints without running code from them, and fit them to an architecture.

Only two decoders ever touch a checkpoint's bytes: safetensors, and ``torch.load`` with
``weights_only=True`` (a restricted unpickler that builds tensors and plain containers and refuses
everything else). A full pickle is opened only when the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

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

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "network", "weights")
COMPILE_AND_PARALLEL_PREFIXES = ("module.", "_orig_mod.")
TRUST_FLAG = "--trust-pickle"


@dataclass
class Checkpoint:
    """A state_dict read from ``path``.

    ``tensors`` keeps the file's own key names; ``prefix`` is what was stripped to get the names
    the architecture uses (``module.``, ``_orig_mod.``), and ``wrapper_key`` the dict key the
    state_dict sat under, if any.
    """

    path: Path
    tensors: dict[str, Tensor]
    prefix: str = ""
    wrapper_key: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model_state(self) -> dict[str, Tensor]:
        """The state_dict with the wrapper prefix removed: the names the architecture uses."""
        n = len(self.prefix)
        return {k[n:]: v for k, v in self.tensors.items()}

    def file_key(self, model_key: str) -> str:
        """The file's key name for an architecture key name."""
        return self.prefix + model_key


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Checkpoint:
    """Read a checkpoint file into a :class:`Checkpoint`, executing nothing from it."""
    path = Path(path)
    try:
        _check_readable(path)
        if path.stat().st_size == 0:
            raise BdpruneError("the file is empty", path=path, hint="pass a non-empty checkpoint")
        if path.suffix == ".safetensors" or _looks_like_safetensors(path):
            raw: object = _load_safetensors(path)
        else:
            raw = _load_torch(path, trust_pickle=trust_pickle)
    except OSError as exc:  # a name too long, an I/O error, a file that vanished: still the user's path
        raise BdpruneError(f"cannot be read ({exc.strerror or exc})", path=path, hint="check the path") from None
    tensors, wrapper_key = _unwrap(raw, path)
    notes = []
    if wrapper_key is not None:
        notes.append(f"using the state_dict under key {wrapper_key!r}")
    tensors = {k: v for k, v in tensors.items()}
    prefix = _common_prefix(tensors)
    if prefix:
        notes.append(f"stripping key prefix {prefix!r}")
    return Checkpoint(path=path, tensors=tensors, prefix=prefix, wrapper_key=wrapper_key, notes=notes)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise BdpruneError("no such file", path=path, hint="check the path")
    if path.is_dir():
        raise BdpruneError("is a directory, not a checkpoint file", path=path, hint="pass the .pt/.safetensors file inside it")
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
        with warnings.catch_warnings():  # torch warns about pickle protocols; the user cannot act on it
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


def _unwrap(obj: object, path: Path) -> tuple[dict[str, Tensor], str | None]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise BdpruneError(
            f"holds a {type(obj).__name__}, not a state_dict", path=path, hint="save model.state_dict() and pass that file"
        )
    if all(isinstance(v, Tensor) for v in obj.values()) and obj:
        return _tensors_only(obj, path), None
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if _is_tensor_dict(inner):
            return _tensors_only(inner, path), key
    nested = [k for k, v in obj.items() if _is_tensor_dict(v)]
    if len(nested) == 1:
        return _tensors_only(obj[nested[0]], path), str(nested[0])
    if len(nested) > 1:
        raise BdpruneError(
            f"holds several tensor dicts ({', '.join(map(str, nested[:4]))}) and none is called state_dict",
            path=path,
            hint="save the model's state_dict alone",
        )
    if _is_tensor_dict(obj):
        return _tensors_only(obj, path), None
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


def fit_to_model(model: nn.Module, checkpoint: Checkpoint, *, arch: str) -> None:
    """Load ``checkpoint`` into ``model`` strictly; on any mismatch raise one clear error.

    A missing ``num_batches_tracked`` is tolerated (many exporters drop it); everything else must
    match by name and shape.
    """
    state = checkpoint.model_state
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        classifier_only = not missing and not unexpected and all(_is_classifier_key(m) for m in misshaped)
        hint = (
            "pass --num-classes to match the checkpoint's classifier"
            if classifier_only
            else "is --arch right? `bdprune archs` lists them; --num-classes and --arch-arg adjust a family"
        )
        raise BdpruneError(f"does not fit --arch {arch}: {'; '.join(parts)}", path=checkpoint.path, hint=hint)
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
