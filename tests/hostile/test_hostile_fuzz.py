"""Fuzzing the two readers of untrusted files: whatever the bytes, load_checkpoint and
load_images either succeed or raise BdpruneError (one line), never anything else.

Inputs: random bytes; valid torch.save / safetensors / np.savez files with random bit flips and
truncations; and valid containers holding random small tensors and arrays (dtypes, shapes,
keys). Example counts are modest so the suite stays fast.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_save

from bdprune.checkpoint import load_checkpoint
from bdprune.data import load_images
from bdprune.errors import BdpruneError
from bdprune.scan import load_model

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
SUFFIXES = [".pt", ".pth", ".bin", ".safetensors", ".npz", ""]

@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One directory for every example's file (module-scoped: hypothesis reruns the test body)."""
    return tmp_path_factory.mktemp("fuzz")


def _file(folder: Path, data: bytes, suffix: str) -> Path:
    path = folder / f"fuzz{suffix}"
    path.write_bytes(data)
    return path


def _only_bdprune_errors(call) -> object | None:
    """Run ``call``; a BdpruneError must be one line; any other exception fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    except BdpruneError as err:
        text = str(err)
        assert "\n" not in text and "\r" not in text and text.strip() == text
        return None


def _check_loaded_checkpoint(ckpt) -> None:
    if ckpt is None:
        return
    assert ckpt.tensors and all(isinstance(v, torch.Tensor) for v in ckpt.tensors.values())


def _check_loaded_images(data) -> None:
    if data is None:
        return
    assert data.images.dtype == torch.float32 and data.images.dim() == 4 and len(data) > 0
    assert torch.isfinite(data.images).all()
    if data.labels is not None:
        assert data.labels.dtype == torch.int64 and len(data.labels) == len(data) and (data.labels >= 0).all()


# --- seeds: valid files of each format --------------------------------------------------------


def _seed_files() -> dict[str, bytes]:
    g = torch.Generator().manual_seed(0)
    state = {"conv.weight": torch.randn(4, 1, 3, 3, generator=g), "bn.running_var": torch.rand(4, generator=g)}
    buf = io.BytesIO()
    torch.save(state, buf)
    legacy = io.BytesIO()
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    npz = io.BytesIO()
    np.savez(npz, images=np.random.default_rng(0).random((3, 1, 4, 4), dtype=np.float32), labels=np.array([0, 1, 2]))
    return {"torch": buf.getvalue(), "legacy": legacy.getvalue(), "safetensors": safetensors_save(state), "npz": npz.getvalue()}


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    """A valid file with a few bytes flipped, a cut, or both."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=512), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(scratch, data, suffix):
    path = _file(scratch, data, suffix)
    _check_loaded_checkpoint(_only_bdprune_errors(lambda: load_checkpoint(path)))
    _check_loaded_images(_only_bdprune_errors(lambda: load_images(path)))


@FUZZ
@given(data=mutated(), suffix=st.sampled_from(SUFFIXES))
def test_mutated_valid_files(scratch, data, suffix):
    path = _file(scratch, data, suffix)
    _check_loaded_checkpoint(_only_bdprune_errors(lambda: load_checkpoint(path)))
    _check_loaded_images(_only_bdprune_errors(lambda: load_images(path)))


# --- valid containers, random content ---------------------------------------------------------

TORCH_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]
NUMPY_DTYPES = [np.float32, np.float64, np.float16, np.uint8, np.int8, np.int64, np.uint64, np.bool_, np.complex64, "U2", "V4"]
KEYS = ["conv1.weight", "bn1.weight", "bn1.running_var", "fc2.weight", "module.conv1.weight", "state_dict", "x", ""]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


@st.composite
def tensor(draw) -> torch.Tensor:
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = draw(shapes)
    t = torch.randn(shape, dtype=torch.float64) * draw(st.sampled_from([1.0, 1e30]))
    if draw(st.booleans()) and t.numel():
        t.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf")]))
    return t.to(dtype)


@st.composite
def state_like(draw) -> object:
    tensors = draw(st.dictionaries(st.sampled_from(KEYS), tensor(), max_size=5))
    wrap = draw(st.sampled_from(["plain", "state_dict", "nested", "list", "mixed"]))
    if wrap == "state_dict":
        return {"state_dict": tensors, "epoch": 3}
    if wrap == "nested":
        return {"a": tensors, "b": dict(tensors)}
    if wrap == "list":
        return list(tensors.values())
    if wrap == "mixed":
        return {**tensors, "note": "text", "n": 3}
    return tensors


@FUZZ
@given(obj=state_like(), fmt=st.sampled_from(["torch", "safetensors"]))
def test_random_state_dicts(scratch, obj, fmt):
    if fmt == "safetensors":
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            return  # safetensors holds tensors only
        try:
            data = safetensors_save({k: v.contiguous() for k, v in obj.items()})
        except Exception:  # the writer itself refuses some (complex dtypes); not bdprune's concern
            return
        path = _file(scratch, data, ".safetensors")
    else:
        buf = io.BytesIO()
        torch.save(obj, buf)
        path = _file(scratch, buf.getvalue(), ".pt")
    ckpt = _only_bdprune_errors(lambda: load_checkpoint(path))
    _check_loaded_checkpoint(ckpt)
    # ...and whatever loaded goes into a model as one clear error or a loaded model.
    _only_bdprune_errors(lambda: load_model(path, "smallcnn", arch_args={"width": "2"}))


@st.composite
def array(draw) -> np.ndarray:
    dtype = draw(st.sampled_from(NUMPY_DTYPES))
    shape = draw(shapes)
    values = np.random.default_rng(draw(st.integers(0, 2**16))).random(shape) * draw(st.sampled_from([1.0, 255.0, 1e30, -3.0]))
    if dtype in ("U2", "V4"):
        return np.zeros(shape, dtype=dtype)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = values.astype(dtype)
    if draw(st.booleans()) and out.size and np.issubdtype(out.dtype, np.floating):
        out.flat[0] = draw(st.sampled_from([np.nan, np.inf]))
    return out


NPZ_KEYS = ["images", "labels", "x", "y", "true_labels", "data", "other"]


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(NPZ_KEYS), array(), max_size=4), compressed=st.booleans())
def test_random_npz_contents(scratch, arrays, compressed):
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    path = _file(scratch, buf.getvalue(), ".npz")
    _check_loaded_images(_only_bdprune_errors(lambda: load_images(path)))


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_the_seeds_themselves_load(tmp_path, seed):
    """The unmutated seed files are valid (otherwise the mutation tests prove little)."""
    path = _file(tmp_path, SEEDS[seed], ".npz" if seed == "npz" else ".pt")
    if seed == "npz":
        assert len(load_images(path)) == 3
    else:
        assert set(load_checkpoint(path).tensors) == {"conv.weight", "bn.running_var"}
