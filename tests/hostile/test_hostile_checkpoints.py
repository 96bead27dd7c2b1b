"""Hostile and broken checkpoint files: code in pickles never runs, every damaged or foreign
file is one clear error naming it."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bdprune.checkpoint import load_checkpoint
from bdprune.data import load_images
from bdprune.errors import BdpruneError
from bdprune.scan import load_model

ARCH = ["--arch", "smallcnn", "--arch-arg", "width=4"]  # the model of conftest.files


class RunsShell:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class OpensFile:
    """Unpickling this calls ``open(marker, 'w')``: creates ``marker`` without any shell."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _save_evil(path: Path, payload: object, how: str) -> None:
    obj = {"conv1.weight": torch.zeros(4, 1, 3, 3), "payload": payload}
    if how == "zip":
        torch.save(obj, path)
    elif how == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, as pickle.dump writes it
        with path.open("wb") as f:
            pickle.dump({"payload": payload}, f)


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("payload", [RunsShell, OpensFile])
def test_code_in_a_pickle_never_runs(tmp_path, how, payload, expect_error):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    _save_evil(path, payload(marker), how)
    with pytest.raises(BdpruneError, match="--trust-pickle") as err:
        load_checkpoint(path)
    assert "evil.pt" in str(err.value)
    assert not marker.exists()
    line = expect_error("scan", path, *ARCH, names=("evil.pt", "--trust-pickle"))
    assert "refused to unpickle" in line
    assert not marker.exists()


def test_the_payload_is_live(tmp_path):
    """Control for the test above: the same bytes do run code once trusted, so the refusal is real."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    _save_evil(path, OpensFile(marker), "zip")
    load_checkpoint(path, trust_pickle=True)
    assert marker.exists()


def test_code_in_a_cifar_batch_never_runs(tmp_path, files, expect_error):
    """The CIFAR-10 reader unpickles too: only numpy arrays and containers are allowed."""
    marker = tmp_path / "PWNED"
    batch = tmp_path / "data_batch_1"
    with batch.open("wb") as f:
        pickle.dump({b"data": OpensFile(marker), b"labels": [0]}, f)
    with pytest.raises(BdpruneError, match="CIFAR-10"):
        load_images(batch)
    expect_error("scan", files.checkpoint, *ARCH, "--data", batch, names="data_batch_1")
    assert not marker.exists()


def test_pickled_module_refused_by_default_and_loaded_with_trust_pickle(files, cli, expect_error):
    path = files.root / "whole_model.pt"
    torch.save(files.model, path)
    line = expect_error("scan", path, *ARCH, names=("whole_model.pt", "--trust-pickle"))
    assert "SmallCNN" in line  # names the class it refused to build
    out = cli("scan", path, *ARCH, "--trust-pickle", "--format", "json")
    assert out.exit_code in (0, 1), out.stderr
    assert not out.error_lines and "Traceback" not in out.stderr
    assert json.loads(out.stdout)  # a report came out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _lying_header(good: bytes) -> bytes:
    """The safetensors file with the first tensor's offsets pointing past the end."""
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, 10**9]
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + good[8 + n :]


BROKEN = {
    "truncated.pt": lambda f: f.checkpoint.read_bytes()[: f.checkpoint.stat().st_size // 2],
    "truncated.safetensors": lambda f: f.safetensors.read_bytes()[: f.safetensors.stat().st_size // 2],
    "header_only.safetensors": lambda f: f.safetensors.read_bytes()[:20],
    "lying_header.safetensors": lambda f: _lying_header(f.safetensors.read_bytes()),
    "huge_header_length.safetensors": lambda f: (2**40).to_bytes(8, "little") + b"{}",
    "empty.pt": lambda f: b"",
    "empty.safetensors": lambda f: b"",
    "notes.txt": lambda f: b"this is a text file\nnot a checkpoint\n",
    "notes.pt": lambda f: b"this is a text file\nnot a checkpoint\n",
    "random.bin": lambda f: np.random.default_rng(0).bytes(4096),
    "data_as_checkpoint.npz": lambda f: f.data.read_bytes(),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_checkpoint_files(files, expect_error, name):
    path = _write(files.root / name, BROKEN[name](files))
    with pytest.raises(BdpruneError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(str(path))
    expect_error("scan", path, *ARCH, names=name)
    expect_error("prune", path, *ARCH, "-o", "out.safetensors", names=name)


def test_checkpoint_path_problems(files, expect_error):
    assert "no such file" in expect_error("scan", "missing.pt", *ARCH, names="missing.pt")
    (files.root / "folder.pt").mkdir()
    assert "directory" in expect_error("prune", "folder.pt", *ARCH, "-o", "x.safetensors", names="folder.pt")
    assert "no such file" in expect_error("eval", "missing.pt", *ARCH, "--data", files.data, names="missing.pt")
    long_name = "x" * 300 + ".pt"  # ENAMETOOLONG from stat(): still the user's path, still one line
    expect_error("scan", long_name, *ARCH, names="xxxx")


class _OsWithoutReadPermission:
    """The os module, except that access(path, R_OK) says no (what a non-root user would hear)."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def access(path, mode, **kwargs):
        return False if mode & os.R_OK else os.access(path, mode, **kwargs)


def test_unreadable_checkpoint(files, expect_error, main_cli, monkeypatch):
    path = files.root / "secret.pt"
    path.write_bytes(files.checkpoint.read_bytes())
    if os.geteuid() == 0:
        # root reads anything, so chmod cannot make the file unreadable: make bdprune's own
        # permission check hear "no" instead, and check the message and the exit.
        monkeypatch.setattr("bdprune.checkpoint.os", _OsWithoutReadPermission())
        with pytest.raises(BdpruneError, match="permission denied"):
            load_checkpoint(path)
        line = expect_error("scan", path, *ARCH, names="secret.pt")
        assert "permission denied" in line and "chmod" in line
        return
    path.chmod(0)
    try:
        with pytest.raises(BdpruneError, match="permission denied"):
            load_checkpoint(path)
        # The command line refuses it while parsing arguments (click's readable check).
        code, out, err = main_cli("scan", str(path), *ARCH)
        assert code == 2 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith("error:") and "secret.pt" in err
        assert "readable" in err and "Traceback" not in err
    finally:
        path.chmod(0o644)


def test_file_name_with_a_newline_stays_one_line(files, expect_error):
    path = files.root / "two\nlines.pt"
    path.write_bytes(b"")
    line = expect_error("scan", path, *ARCH, names="lines.pt")
    assert "empty" in line


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda w: w.to_sparse(), "layout sparse"),
        (lambda w: torch.quantize_per_tensor(w, 0.1, 0, torch.qint8), "quantized"),
        (lambda w: torch.empty_like(w, device="meta"), "meta tensor"),
        (lambda w: w.to(torch.complex64), "complex"),
    ],
    ids=["sparse", "quantized", "meta", "complex"],
)
def test_tensors_a_state_dict_cannot_hold(files, expect_error, make, problem):
    state = dict(files.model.state_dict())
    with warnings.catch_warnings():  # quantized tensors are deprecated in recent torch
        warnings.simplefilter("ignore")
        state["conv1.weight"] = make(state["conv1.weight"])
    torch.save(state, files.root / "odd.pt")
    line = expect_error("scan", "odd.pt", *ARCH, names=("odd.pt", "conv1.weight", problem))
    assert "dense real-valued" in line


@pytest.mark.parametrize(
    "payload, what",
    [([torch.zeros(2)], "holds a list"), ({}, "holds no tensors"), (torch.zeros(3), "holds a Tensor"), ({"a": 1}, "holds no tensors")],
    ids=["list", "empty-dict", "bare-tensor", "no-tensors"],
)
def test_checkpoints_without_a_state_dict(files, expect_error, payload, what):
    torch.save(payload, files.root / "odd.pt")
    assert what in expect_error("scan", "odd.pt", *ARCH, names="odd.pt")


# --- a state_dict for another architecture ---------------------------------------------------


def test_state_dict_of_another_architecture(files, expect_error):
    line = expect_error("scan", files.checkpoint, "--arch", "resnet18", names="model.pt")
    assert "does not fit --arch resnet18" in line
    assert "missing: " in line and "unexpected: " in line and "more" in line  # lists a few, counts the rest
    assert "--arch" in line and "--num-classes" in line


def test_missing_and_unexpected_keys(files, expect_error):
    state = dict(files.model.state_dict())
    del state["bn2.running_var"], state["bn2.running_mean"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, files.root / "edited.pt")
    line = expect_error("scan", "edited.pt", *ARCH, names="edited.pt")
    assert "2 missing: bn2.running_mean, bn2.running_var" in line
    assert "1 unexpected: extra.weight" in line


def test_shape_mismatch_lists_a_few(files, expect_error):
    line = expect_error("scan", files.checkpoint, "--arch", "smallcnn", "--arch-arg", "width=8", names="model.pt")
    assert "mis-shaped: conv1.weight (4, 1, 3, 3) vs (8, 1, 3, 3)" in line
    assert "and 18 more" in line and "--arch-arg" in line


def test_classifier_mismatch_suggests_num_classes(files, expect_error):
    line = expect_error("scan", files.checkpoint, *ARCH, "--num-classes", "5", names="model.pt")
    assert "fc2.weight (10, 16) vs (5, 16)" in line and "--num-classes" in line


def test_library_load_model_raises_only_bdprune_error(files):
    with pytest.raises(BdpruneError, match="does not fit"):
        load_model(files.checkpoint, "vgg16_bn")
