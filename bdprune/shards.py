"""Sharded checkpoints as Hugging Face writes them: ``model.safetensors.index.json`` (or
``pytorch_model.bin.index.json``), ``{"metadata": ..., "weight_map": {key: shard file}}``, beside
the shards ``model-00001-of-00002.safetensors`` ... . The index file, or the directory holding
it, is one checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import BdpruneError

INDEX_SUFFIX = ".index.json"
INDEX_HINT = "pass the model.safetensors.index.json written with the shards, or the folder holding it and its shards"


def is_index(path: Path) -> bool:
    """Whether ``path`` is named like a shard index (``*.index.json``)."""
    return path.name.endswith(INDEX_SUFFIX)


def find_index(path: str | Path) -> Path | None:
    """The shard index a path stands for: the path itself when it is one, the single
    ``*.index.json`` inside a directory, else None."""
    path = Path(path)
    if is_index(path):
        return path
    if not path.is_dir():
        return None
    found = sorted(p for p in path.iterdir() if is_index(p) and p.is_file())
    if len(found) > 1:
        raise BdpruneError(
            f"holds several shard indexes ({', '.join(p.name for p in found[:4])})",
            path=path,
            hint="pass the .index.json of the checkpoint to load",
        )
    return found[0] if found else None


def read_index(index: Path) -> dict[str, Path]:
    """The index's weight map: tensor name -> shard path (beside the index, never elsewhere)."""
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BdpruneError(f"is not a shard index ({type(exc).__name__})", path=index, hint=INDEX_HINT) from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise BdpruneError("is not a shard index (no \"weight_map\" of tensor names to shard files)", path=index, hint=INDEX_HINT)
    out = {}
    for key, name in weight_map.items():
        # A shard is a file name beside the index: never a path that could reach other files.
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise BdpruneError(f"names the shard {name!r} for {key!r}, not a file name beside it", path=index, hint=INDEX_HINT)
        out[str(key)] = index.parent / name
    return out


def shard_files(index: Path) -> list[Path]:
    """The distinct shard files of ``index`` in the order the weight map first names them."""
    return list(dict.fromkeys(read_index(index).values()))


def load_shards(index: Path, load_one) -> dict:
    """All shards' tensors merged, each shard read with ``load_one(path) -> mapping`` (the safe
    readers of :mod:`bdprune.checkpoint`); every tensor the index names must be in its shard, and
    no name may appear in two shards."""
    weight_map = read_index(index)
    tensors: dict = {}
    for shard in dict.fromkeys(weight_map.values()):
        if not shard.is_file():
            raise BdpruneError(f"the shard {shard.name} it lists is missing", path=index, hint="copy every shard beside the index")
        part = load_one(shard)
        twice = sorted(set(part) & set(tensors))
        if twice:
            raise BdpruneError(f"{twice[0]!r} is in two shards (one is {shard.name})", path=index, hint="re-export the checkpoint")
        tensors.update(part)
    absent = [k for k, shard in weight_map.items() if k not in tensors]
    if absent:
        raise BdpruneError(
            f"lists {len(absent)} tensor(s) its shards do not hold, e.g. {absent[0]!r} in {weight_map[absent[0]].name}",
            path=index,
            hint="the shards do not belong to this index; re-export the checkpoint",
        )
    return tensors


def sharded_sha256(index: Path) -> str:
    """Hex SHA-256 of the index's bytes followed by each shard's bytes, in weight-map order (of
    the index alone when it lists no shards it could read: a broken checkpoint still gets a hash)."""
    try:
        shards = shard_files(index)
    except BdpruneError:
        shards = []
    digest = hashlib.sha256()
    for path in [index, *shards]:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
