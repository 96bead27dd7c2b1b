"""Bad data for --data / --val / --poisoned: degenerate images, wrong shapes, bad labels, files
that are not data at all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bdprune.data import load_images
from bdprune.errors import BdpruneError
from bdprune.methods.base import VARIANCE_FLOOR
from _pipeline import score
from bdprune.scan import load_model, load_samples

ARCH = ["--arch", "smallcnn", "--arch-arg", "width=4"]  # the model of conftest.files
SHAPE = (1, 8, 8)


def _npz(files, name: str, **arrays) -> str:
    np.savez(files.root / name, **arrays)
    return name


def _images(n: int = 8, shape=SHAPE, fill=None) -> np.ndarray:
    if fill is not None:
        return np.full((n, *shape), fill, dtype=np.float32)
    return np.random.default_rng(1).random((n, *shape), dtype=np.float32)


# --- degenerate but valid images ---------------------------------------------------------------


def test_all_black_images_give_finite_scores_and_a_note(files):
    """Constant images make constant BN inputs: the clean variance is 0 there. BNP floors it at
    VARIANCE_FLOOR (1e-12) instead of dividing by zero, and says so in a note per layer."""
    _npz(files, "black.npz", images=_images(fill=0.0))
    loaded = load_model(files.checkpoint, "smallcnn", arch_args={"width": "4"})
    data = load_images("black.npz")
    bnp = score(loaded, "bnp", data=data, device="cpu", show_progress=False)
    assert all(math.isfinite(s) for layer in bnp.layers for s in layer.scores)
    floored = [n for n in bnp.notes if "the clean variance is zero" in n]
    assert floored and all(f"floored at {VARIANCE_FLOOR:g}" in n for n in floored)
    assert any(n.startswith("bn1: the clean variance is zero in 4 channel(s)") for n in floored)
    # EP standardizes each channel over the samples: a constant channel becomes all zeros,
    # entropy 0 for every channel, no spread, nothing flagged -- finite, never NaN.
    ep = score(loaded, "ep", data=data, device="cpu", show_progress=False)
    assert all(math.isfinite(s) for layer in ep.layers for s in layer.scores)
    assert ep.flagged_total == 0


def test_all_black_images_on_the_command_line(files, cli):
    _npz(files, "black.npz", images=_images(fill=0.0))
    out = cli("scan", files.checkpoint, *ARCH, "--data", "black.npz", "--format", "json")
    assert out.exit_code in (0, 1) and not out.error_lines, out.stderr
    assert "note: bn1: the clean variance is zero in 4 channel(s)" in out.stderr
    assert "NaN" not in out.stdout and "Infinity" not in out.stdout


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_images(files, expect_error, value):
    images = _images()
    images[3, 0, 2, 2] = value
    _npz(files, "bad.npz", images=images)
    line = expect_error("scan", files.checkpoint, *ARCH, "--data", "bad.npz", names="bad.npz")
    assert "NaN or infinite" in line
    line = expect_error("eval", files.checkpoint, *ARCH, "--data", "bad.npz", names="bad.npz")


def test_float16_overflow_is_caught(files, expect_error):
    """float16 images of 65504 are finite, but 2*65504 overflows to inf when stored."""
    with np.errstate(over="ignore"):
        images = np.full((4, *SHAPE), 70000, dtype=np.float32).astype(np.float16)
    _npz(files, "f16.npz", images=images)
    expect_error("scan", files.checkpoint, *ARCH, "--data", "f16.npz", names="f16.npz")


# --- images that do not fit the model ----------------------------------------------------------


def test_wrong_channel_count(files, expect_error):
    _npz(files, "rgb.npz", images=_images(shape=(3, 8, 8)), labels=np.zeros(8, dtype=np.int64))
    line = expect_error("scan", files.checkpoint, *ARCH, "--data", "rgb.npz", names="rgb.npz")
    assert "3 channel(s) but the model takes 1" in line
    expect_error("eval", files.checkpoint, *ARCH, "--data", "rgb.npz", names="rgb.npz")


def test_images_too_small_for_the_model(files, expect_error):
    """1x1 images cannot go through smallcnn's 2x2 max-pool: the forward pass fails."""
    _npz(files, "dots.npz", images=_images(shape=(1, 1, 1)), labels=np.zeros(8, dtype=np.int64))
    line = expect_error("scan", files.checkpoint, *ARCH, "--data", "dots.npz", names="dots.npz")
    assert "do not fit the model" in line and "(1, 1, 1)" in line
    expect_error("eval", files.checkpoint, *ARCH, "--data", "dots.npz", names="dots.npz")


def test_poisoned_and_validation_sets_that_do_not_fit_are_named(files, expect_error):
    _npz(files, "dots.npz", images=_images(shape=(1, 1, 1)), labels=np.zeros(8, dtype=np.int64))
    line = expect_error("eval", files.checkpoint, *ARCH, "--data", files.data, "--target", "0", "--poisoned", "dots.npz", names="dots.npz")
    assert "do not fit the model" in line
    line = expect_error(
        "prune", files.checkpoint, *ARCH, "--data", files.data, "--max-acc-drop", "1", "--val", "dots.npz", "-o", "out.safetensors",
        names="dots.npz",
    )
    assert "do not fit the model" in line


def test_other_image_sizes_work_when_the_model_pools_globally(files, cli):
    """smallcnn ends in a global pool, so 12x12 images are a legitimate input, not an error."""
    _npz(files, "big.npz", images=_images(shape=(1, 12, 12)))
    out = cli("scan", files.checkpoint, *ARCH, "--data", "big.npz", "--format", "json")
    assert out.exit_code in (0, 1) and not out.error_lines, out.stderr


# --- labels ------------------------------------------------------------------------------------


def test_label_out_of_range_for_eval(files, expect_error):
    _npz(files, "labels.npz", images=_images(), labels=np.array([0, 1, 2, 3, 4, 5, 6, 99]))
    line = expect_error("eval", files.checkpoint, *ARCH, "--data", "labels.npz", names="labels.npz")
    assert "label 99 but the model has 10 classes" in line


@pytest.mark.parametrize(
    "labels, problem",
    [
        (np.array([-1, 0, 1, 2, 3, 4, 5, 6]), "negative labels"),
        (np.array([0.5] * 8), "not integers"),
        (np.array(["a"] * 8), "not integers"),
        (np.zeros((8, 2), dtype=np.int64), "labels for 8 images"),
        (np.zeros(5, dtype=np.int64), "labels for 8 images"),
        (np.array([0] * 7 + [2**64 - 1], dtype=np.uint64), "too large"),
        (np.array([0.0] * 7 + [1e30]), "too large"),
    ],
    ids=["negative", "fractional", "strings", "2d", "too-few", "uint64-max", "float-1e30"],
)
def test_bad_labels(files, expect_error, labels, problem):
    _npz(files, "labels.npz", images=_images(), labels=labels)
    assert problem in expect_error("eval", files.checkpoint, *ARCH, "--data", "labels.npz", names="labels.npz")


# --- files that are not (usable) data ------------------------------------------------------------


def _put(files, name: str, data: bytes) -> str:
    (files.root / name).write_bytes(data)
    return name


def _write_npy(files):
    np.save(files.root / "array.npy", _images())
    return "array.npy"


NOT_DATA = {
    "empty file": (lambda f: _put(f, "empty.npz", b""), "is empty"),
    "no image key": (lambda f: _npz(f, "keys.npz", pictures=_images(), y=np.zeros(8)), "no image array (found keys: pictures, y)"),
    "no images": (lambda f: _npz(f, "none.npz", images=np.zeros((0, *SHAPE), np.float32)), "holds no images"),
    "scalar images": (lambda f: _npz(f, "scalar.npz", images=np.float32(1)), "images have shape ()"),
    "5-d images": (lambda f: _npz(f, "5d.npz", images=np.zeros((2, 1, 1, 8, 8), np.float32)), "images have shape"),
    "string images": (lambda f: _npz(f, "str.npz", images=np.array(["x"] * 4)), "images have dtype"),
    "complex images": (lambda f: _npz(f, "cplx.npz", images=np.zeros((4, *SHAPE), np.complex64)), "images have dtype complex64"),
    "text file": (lambda f: _put(f, "notes.npz", b"hello\n"), "not an .npz file"),
    "a checkpoint": (lambda f: f.checkpoint.name, "no image array"),
    "a safetensors file": (lambda f: f.safetensors.name, "not an .npz file"),
    "a .npy array": (_write_npy, "a single .npy array, not an .npz"),
    "truncated npz": (lambda f: _put(f, "cut.npz", f.data.read_bytes()[:300]), "cannot be read as .npz"),
    "missing": (lambda f: "missing.npz", "no such data file"),
    "empty folder": (lambda f: (f.root / "folder").mkdir() or "folder", "holds no images"),
}


@pytest.mark.parametrize("case", sorted(NOT_DATA))
def test_not_data(files, expect_error, case):
    make, problem = NOT_DATA[case]
    name = make(files)
    with pytest.raises(BdpruneError) as err:
        load_images(name)
    assert problem in str(err.value)
    line = expect_error("scan", files.checkpoint, *ARCH, "--data", name, names=name)
    assert problem in line
    expect_error("eval", files.checkpoint, *ARCH, "--data", name, names=name)
    expect_error("prune", files.checkpoint, *ARCH, "--data", name, "-o", "out.safetensors", names=name)


def test_broken_image_in_an_image_folder(files, expect_error):
    folder = files.root / "imgs" / "cat"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    line = expect_error("scan", files.checkpoint, *ARCH, "--data", "imgs", names="broken.png")
    assert "cannot read image" in line


# --- fewer samples than asked for ------------------------------------------------------------


def test_fewer_samples_than_requested_uses_all_with_a_note(files, cli):
    """The decision: use every sample there is, and say so on stderr with the count."""
    data = load_samples(files.data, 500, seed=0)
    assert len(data) == 24
    assert data.notes == [f"{files.data} holds 24 samples, fewer than --samples 500: using all 24"]
    assert load_samples(files.data, 24, seed=0).notes == []  # exactly enough: nothing to say
    assert load_samples(files.data, 10, seed=0).notes == []
    out = cli("scan", files.checkpoint, *ARCH, "--data", files.data, "--samples", "500", "--format", "json")
    assert out.exit_code in (0, 1) and not out.error_lines, out.stderr
    assert "holds 24 samples, fewer than --samples 500: using all 24" in out.stderr
    out = cli("scan", files.checkpoint, *ARCH, "--data", files.data, "--samples", "10", "--format", "json")
    assert "fewer than --samples" not in out.stderr


def test_fewer_samples_note_also_for_prune(files, cli):
    out = cli("prune", files.checkpoint, *ARCH, "--data", files.data, "-o", "pruned.safetensors")
    assert out.exit_code == 0, out.stderr
    assert "holds 24 samples, fewer than --samples 500: using all 24" in out.stderr
