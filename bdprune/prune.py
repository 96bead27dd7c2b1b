"""Apply a scan's flags to a checkpoint and write it as safetensors, all-or-nothing.

Masks follow the papers: EP and BNP zero the BN weight (gamma) of a flagged channel, CLP zeroes
gamma and beta. bnp+ zeroes gamma and sets beta to the channel's clean mean output (its "fill").
Every tensor keeps its shape and its original key name, so the user's own model
class loads the result with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ._version import __version__
from .atomic import atomic_path, check_output_path
from .checkpoint import Checkpoint, file_sha256
from .errors import BdpruneError
from .stats import bn_layers


def default_output(checkpoint: Path) -> Path:
    """``<stem>.pruned.safetensors`` beside the input (for a shard index ``model.safetensors.index.json``:
    ``model.pruned.safetensors``)."""
    stem = checkpoint.stem
    if checkpoint.name.endswith(".index.json"):
        stem = Path(checkpoint.name[: -len(".index.json")]).stem
    return checkpoint.with_name(f"{stem}.pruned.safetensors")


def check_channels(
    model: nn.Module, channels: Mapping[str, Sequence[int]], params: Sequence[str], *, fill: Fill | None = None, source: object = None
) -> None:
    """Refuse channel lists naming a layer that is not a BN of ``model``, an index out of range,
    or a pruned layer whose fill values do not match its width."""
    layers = dict(bn_layers(model))
    for layer, chans in channels.items():
        bn = layers.get(layer)
        if bn is None:
            raise BdpruneError(f"layer {layer!r} is not a BatchNorm layer of this model", path=source, hint="was the report made for this --arch?")
        bad = [c for c in chans if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < bn.num_features]
        if bad:
            raise BdpruneError(f"{layer} has {bn.num_features} channels; indices {bad[:5]} are out of range", path=source)
        if not bn.affine and params:
            raise BdpruneError(f"{layer} has no affine weight to zero (affine=False)", hint="this layer cannot be pruned by masking")
        if chans and fill is not None and layer in fill and len(fill[layer]) != bn.num_features:
            raise BdpruneError(f"{layer} has {bn.num_features} channels but {len(fill[layer])} fill values", path=source)


Fill = Mapping[str, Sequence[float]]


def _pruned_values(param: str, layer: str, chans: Sequence[int], fill: Fill | None, like: Tensor) -> Tensor | float:
    """What ``param`` of the pruned channels becomes: 0, or for ``bias`` the fill values when given."""
    if param == "bias" and fill is not None and layer in fill:
        return torch.tensor([float(fill[layer][c]) for c in chans], dtype=like.dtype, device=like.device)
    return 0


def masked_tensors(
    checkpoint: Checkpoint, channels: Mapping[str, Sequence[int]], params: Sequence[str], fill: Fill | None = None
) -> dict[str, Tensor]:
    """The checkpoint's tensors (file key names) with ``params`` of the listed channels set to 0
    (a bias to its ``fill`` value where one is given)."""
    tensors = {k: v for k, v in checkpoint.tensors.items()}
    for layer, chans in channels.items():
        if not chans:
            continue
        for param in params:
            key = checkpoint.file_key(f"{layer}.{param}")
            pruned = tensors[key].clone()
            pruned[list(chans)] = _pruned_values(param, layer, chans, fill, pruned)
            tensors[key] = pruned
    return tensors


def model_tensors(checkpoint: Checkpoint, model: nn.Module) -> dict[str, Tensor]:
    """The checkpoint's tensors (file key names and dtypes) with every one the model holds replaced
    by the model's current value (after a repair changed them all)."""
    tensors = dict(checkpoint.tensors)
    for name, value in model.state_dict().items():
        key = checkpoint.file_key(name)
        if key in tensors:
            tensors[key] = value.detach().to("cpu", tensors[key].dtype).reshape(tensors[key].shape)
    return tensors


def mask_model(model: nn.Module, channels: Mapping[str, Sequence[int]], params: Sequence[str], fill: Fill | None = None) -> None:
    """Prune the listed channels in ``model``'s own BN layers, in place, as :func:`masked_tensors` does."""
    layers = dict(bn_layers(model))
    with torch.no_grad():
        for layer, chans in channels.items():
            for param in params:
                tensor = getattr(layers[layer], param)
                tensor[list(chans)] = _pruned_values(param, layer, chans, fill, tensor)


def pruning_metadata(
    *,
    method: str,
    u: float | None,
    samples: int,
    source: Path | None,
    channels: Mapping[str, Sequence[int]],
    params: Sequence[str],
    fill: Fill | None = None,
    extra: Mapping[str, str] | None = None,
    source_sha256: str | None = None,
) -> dict[str, str]:
    """The text metadata stored in the safetensors header. ``source_sha256`` stands in for the
    hash of ``source`` when the pruned model was never a file (the Python API)."""
    meta = {
        "format": "pt",
        "bdprune_version": __version__,
        "method": method,
        "u": "" if u is None else repr(float(u)),
        "samples": str(samples),
        "source_sha256": source_sha256 if source_sha256 is not None else file_sha256(source),
        "pruned_params": ",".join(params),
        "pruned_channels": json.dumps({k: sorted(int(c) for c in v) for k, v in channels.items() if v}, sort_keys=True),
        **(extra or {}),
    }
    if fill is not None:  # the bias each pruned channel was given, in the order of pruned_channels
        meta["pruned_bias"] = json.dumps(
            {k: [float(fill[k][c]) for c in sorted(v)] for k, v in channels.items() if v and k in fill}, sort_keys=True
        )
    return meta


_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def safetensors_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> bytes:
    """Serialize to the safetensors format with keys sorted, so equal inputs give equal bytes
    (the reference writer orders metadata by hash, which differs between runs)."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise BdpruneError(f"tensor {name} has dtype {t.dtype}, which safetensors output does not support")
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def write_safetensors(tensors: Mapping[str, Tensor], output: Path, metadata: Mapping[str, str], *, source: Path | None, force: bool) -> None:
    """Write ``tensors`` to ``output`` via a temporary file and a rename; the input is never touched."""
    check_output_path(output, inputs=(source,) if source is not None else (), force=force)
    payload = safetensors_bytes(tensors, metadata)
    with atomic_path(output) as tmp:
        with tmp.open("wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def channels_from_report(report_path: Path, checkpoint: Path) -> tuple[dict[str, list[int]], dict]:
    """Flagged channels (and the scan's method, u, samples) from a ``scan --format json`` report."""
    try:
        doc = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON; RecursionError: absurd nesting
        raise BdpruneError(f"cannot read the scan report ({type(exc).__name__})", path=report_path, hint="pass the file written by `bdprune scan --format json`") from None
    entries = doc.get("results", [doc]) if isinstance(doc, dict) else []
    if not isinstance(entries, list):
        entries = []
    if len(entries) > 1:
        entries = [e for e in entries if isinstance(e, dict) and _same_file(e.get("checkpoint"), checkpoint)]
    if len(entries) != 1 or not isinstance(entries[0], dict) or not isinstance(entries[0].get("flagged"), dict):
        raise BdpruneError("is not a scan report for this checkpoint", path=report_path, hint="pass the file written by `bdprune scan --format json`")
    entry = _checked_entry(entries[0], report_path)
    flagged = {str(k): list(v) for k, v in entry["flagged"].items() if isinstance(v, list)}
    return flagged, entry


# What a report may ask to zero: the BN affine parameters, nothing else (never running statistics).
PRUNABLE_PARAMS = ("weight", "bias")


def _checked_entry(entry: dict, report_path: Path) -> dict:
    """The report entry with the fields ``prune --channels`` reads checked for type and range;
    a hand-edited or hostile report gets one clear error naming it."""

    def bad(field: str, want: str) -> BdpruneError:
        return BdpruneError(
            f"field {field!r} of the scan report is {entry.get(field)!r}, not {want}",
            path=report_path,
            hint="pass the file written by `bdprune scan --format json`",
        )

    method, params = entry.get("method"), entry.get("pruned_params")
    if method is not None and not isinstance(method, str):
        raise bad("method", "a method name")
    if params is not None and (
        not isinstance(params, list) or not params or not all(isinstance(p, str) and p in PRUNABLE_PARAMS for p in params)
    ):
        raise bad("pruned_params", f"a list drawn from {', '.join(PRUNABLE_PARAMS)}")
    u = entry.get("u")
    if u is not None and (isinstance(u, bool) or not isinstance(u, (int, float))):
        raise bad("u", "a number")
    fill = entry.get("fill")
    if fill is not None and not (
        isinstance(fill, dict)
        and all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            for v in fill.values()
        )
    ):
        raise bad("fill", "a map of layer to finite bias values")
    for field in ("samples", "channels_total"):
        value = entry.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise bad(field, "a count")
    return entry


def _same_file(a: object, b: Path) -> bool:
    try:
        return a is not None and Path(str(a)).resolve() == b.resolve()
    except OSError:
        return False
