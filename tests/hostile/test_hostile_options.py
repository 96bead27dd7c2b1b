"""Invalid option values: one line, exit 2, refused before any file is read or written."""

from __future__ import annotations

import pytest
import torch

from bdprune.api import evaluate_checkpoints, prune_checkpoint, scan_checkpoints
from bdprune.errors import BdpruneError

ARCH = ["--arch", "smallcnn", "--arch-arg", "width=4"]  # the model of conftest.files


@pytest.mark.parametrize("value", ["-1", "-0.5", "nan", "inf", "-inf"])
@pytest.mark.parametrize("command", ["scan", "prune"])
def test_bad_u(files, expect_error, command, value):
    extra = ["-o", "out.safetensors"] if command == "prune" else []
    line = expect_error(command, files.checkpoint, *ARCH, f"--u={value}", *extra)
    assert "--u must be a finite number >= 0" in line


@pytest.mark.parametrize("with_data", [True, False], ids=["with-data", "without-data"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_samples(files, expect_error, value, with_data):
    """Refused even when --samples would not be used, so a typo never goes unnoticed."""
    data = ["--data", files.data] if with_data else []
    assert f"--samples must be at least 1, got {value}" in expect_error("scan", files.checkpoint, *ARCH, *data, "--samples", value)
    expect_error("prune", files.checkpoint, *ARCH, *data, "--samples", value, "-o", "out.safetensors")


@pytest.mark.parametrize("command", ["scan", "prune", "eval"])
@pytest.mark.parametrize("value", ["0", "-4"])
def test_bad_batch_size(files, expect_error, command, value):
    extra = {"scan": ["--data", files.data], "prune": ["--data", files.data, "-o", "out.safetensors"], "eval": ["--data", files.data]}
    line = expect_error(command, files.checkpoint, *ARCH, *extra[command], "--batch-size", value)
    assert f"--batch-size must be at least 1, got {value}" in line


@pytest.mark.parametrize(
    "device, problem",
    [
        ("tpu", "unknown --device 'tpu'"),
        ("cuda:-1", "unknown --device"),
        ("gpu0", "unknown --device"),
        ("", "unknown --device ''"),
        ("meta", "unsupported --device 'meta'"),
        ("cuda:99", "cuda:99"),
    ],
)
@pytest.mark.parametrize("command", ["scan", "prune", "eval"])
def test_bad_device(files, expect_error, command, device, problem):
    if device == "cuda:99" and torch.cuda.is_available() and torch.cuda.device_count() > 99:
        pytest.skip("this machine has 100 GPUs")
    extra = {"scan": [], "prune": ["-o", "out.safetensors"], "eval": ["--data", files.data]}
    line = expect_error(command, files.checkpoint, *ARCH, *extra[command], "--device", device)
    assert problem in line
    if device == "cuda:99":
        assert ("no CUDA GPU" in line) if not torch.cuda.is_available() else ("GPU(s)" in line)


def test_cuda_without_a_gpu(files, expect_error):
    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    assert "no CUDA GPU is available" in expect_error("scan", files.checkpoint, *ARCH, "--device", "cuda")


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("bogus", "unknown trigger kind 'bogus'"),
        ("patch:size=abc", "is not a whole number"),
        ("patch:size=-2", "must be >= 1"),
        ("patch:size=3,size=4", "given twice"),
        ("blend:alpha=2,noise", "must be"),
        ("sig:freq=0", "must be"),
        ("patch:image=missing.png", "cannot read image 'missing.png'"),
        ("patch:size=300", "does not fit in 8x8 images"),
    ],
)
def test_malformed_trigger(files, expect_error, spec, problem):
    line = expect_error("eval", files.checkpoint, *ARCH, "--data", files.data, "--target", "0", "--trigger", spec)
    assert f"bad trigger spec {spec!r}" in line and problem in line
    assert "expected" in line  # says what a good spec looks like


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--target", "10", "--trigger", "patch:size=2"], "--target 10 is not a class of this model (0..9)"),
        (["--target", "-1", "--trigger", "patch:size=2"], "--target -1 is not a class"),
        (["--trigger", "patch:size=2"], "ASR needs --target"),
        (["--target", "0", "--trigger", "patch:size=2", "--poisoned", "data.npz"], "--trigger or --poisoned, not both"),
    ],
)
def test_bad_eval_options(files, expect_error, args, problem):
    assert problem in expect_error("eval", files.checkpoint, *ARCH, "--data", files.data, *args)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--seed", str(2**70), "--data", "data.npz"], "--seed 1180591620717411303424 is out of range"),
        (["--normalize", "1,2,3"], "bad --normalize '1,2,3'"),
        (["--normalize", "0.5,0"], "positive STD"),
        (["--format", "yaml"], "unknown output format 'yaml'"),
        (["--method", "bnpp"], "unknown method 'bnpp'"),
        (["--arch-arg", "width"], "bad --arch-arg 'width'"),
    ],
)
def test_other_bad_scan_options(files, expect_error, args, problem):
    assert problem in expect_error("scan", files.checkpoint, *ARCH, *args)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--max-acc-drop", "nan", "--val", "data.npz"], "--max-acc-drop must be >= 0"),
        (["--max-acc-drop", "-1", "--val", "data.npz"], "--max-acc-drop must be >= 0"),
        (["--max-acc-drop", "1"], "--max-acc-drop and --val go together"),
    ],
)
def test_bad_prune_options(files, expect_error, args, problem):
    assert problem in expect_error("prune", files.checkpoint, *ARCH, "--data", files.data, "-o", "out.safetensors", *args)


@pytest.mark.parametrize(
    "args",
    [["scan", "model.pt", *ARCH, "--u", "abc"], ["scan", "model.pt", *ARCH, "--samples", "1.5"], ["scan", "model.pt", "--bogus"], ["frobnicate"]],
    ids=["u-not-a-number", "samples-not-an-int", "unknown-flag", "unknown-command"],
)
def test_usage_errors_are_one_line_from_the_entry_point(files, main_cli, args):
    """Values click cannot even parse: the console script (bdprune.cli.main) prints one line."""
    code, out, err = main_cli(*args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "--help" in err, err
    assert "Traceback" not in err


def test_debug_shows_a_traceback(files, main_cli):
    """--debug is the one way to see the traceback behind an error."""
    with pytest.raises(BdpruneError, match="--u must be"):
        main_cli("--debug", "scan", str(files.checkpoint), *ARCH, "--u", "-1")


def test_library_entry_points_check_options_before_reading_files(tmp_path):
    """Nothing exists at these paths: the option error comes first, before any file is opened."""
    missing = tmp_path / "missing.pt"
    with pytest.raises(BdpruneError, match="--u must be"):
        scan_checkpoints([missing], "smallcnn", u=float("nan"))
    with pytest.raises(BdpruneError, match="--samples must be"):
        scan_checkpoints([missing], "smallcnn", samples=0)
    with pytest.raises(BdpruneError, match="--batch-size must be"):
        prune_checkpoint(missing, "smallcnn", batch_size=0, output=tmp_path / "o.safetensors")
    with pytest.raises(BdpruneError, match="unknown --device"):
        prune_checkpoint(missing, "smallcnn", device="tpu", output=tmp_path / "o.safetensors")
    with pytest.raises(BdpruneError, match="--batch-size must be"):
        evaluate_checkpoints([missing], "smallcnn", data=tmp_path / "missing.npz", batch_size=0)
