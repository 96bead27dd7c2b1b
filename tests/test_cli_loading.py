"""The command line on checkpoints and data as users have them (issue 24): Lightning and
sharded checkpoints, --strip-prefix, ImageFolders of several sizes and --image-size."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bdprune.cli import app
from bdprune.scan import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, result.stderr


def error_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def prefixed(state, prefix: str) -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in state.items())


@pytest.fixture
def lightning_ckpt(tmp_path, bn_checkpoint) -> Path:
    path = tmp_path / "last.ckpt"
    state = OrderedDict([*prefixed(bn_checkpoint.model.state_dict(), "model.").items(), ("criterion.weight", torch.ones(10))])
    torch.save({"state_dict": state, "epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.4.0",
                "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}}, path)
    return path


def test_scan_prune_and_eval_take_a_lightning_checkpoint(tmp_path, lightning_ckpt, bn_checkpoint, images_npz):
    code, out, err = run("scan", lightning_ckpt, *bn_checkpoint.cli_args, "--method", "clp", "--format", "json")
    assert code in (0, 1), err
    assert "note: stripping key prefix 'model.'" in err and "criterion.weight" in err
    assert json.loads(out)["checkpoint"] == str(lightning_ckpt)  # one checkpoint: its report alone
    code, _, err = run("prune", lightning_ckpt, *bn_checkpoint.cli_args, "--data", images_npz, "-o", tmp_path / "p.safetensors")
    assert code == 0, err
    pruned = load_model(tmp_path / "p.safetensors", bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert pruned.checkpoint.prefix == "model."  # the file keeps the checkpoint's own key names
    code, out, err = run("eval", lightning_ckpt, *bn_checkpoint.cli_args, "--data", images_npz, "--compare", tmp_path / "p.safetensors")
    assert code == 0, err
    assert "delta (after - before)" in out


def test_two_fitting_copies_ask_for_strip_prefix(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / "two.ckpt"
    torch.save({"state_dict": {**prefixed(state, "model."), **prefixed(state, "ema.")}}, path)
    code, out, err = run("scan", path, *bn_checkpoint.cli_args, "--method", "clp")
    assert code == 2 and out == ""
    line = error_line(err)
    assert "two.ckpt" in line and "several key prefixes" in line and "--strip-prefix" in line


def test_strip_prefix_chooses_one_copy(tmp_path, bn_checkpoint, images_npz):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / "two.ckpt"
    torch.save({"state_dict": {**prefixed(state, "model."), **prefixed(state, "ema.")}}, path)
    for command in (["scan", path, "--method", "clp"], ["prune", path, "--method", "clp", "-o", tmp_path / "p.safetensors"]):
        code, _, err = run(*command, *bn_checkpoint.cli_args, "--strip-prefix", "ema.")
        assert code in (0, 1), err
        assert "stripping key prefix 'ema.' (--strip-prefix)" in err
    assert run("eval", path, *bn_checkpoint.cli_args, "--data", images_npz)[0] == 2
    code, _, err = run("eval", path, *bn_checkpoint.cli_args, "--data", images_npz, "--strip-prefix", "model.")
    assert code == 0, err


def write_sharded(folder: Path, state: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    keys = list(state)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), 1):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({f"model.{k}": state[k].contiguous() for k in part}, str(folder / name))
        weight_map.update({f"model.{k}": name for k in part})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def test_prune_a_sharded_checkpoint_by_its_index(tmp_path, bn_checkpoint, images_npz):
    index = write_sharded(tmp_path / "hf", bn_checkpoint.model.state_dict())
    code, _, err = run("prune", index, *bn_checkpoint.cli_args, "--data", images_npz)
    assert code == 0, err
    out = tmp_path / "hf" / "model.pruned.safetensors"
    assert out.exists()
    assert set(load_model(out, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args).checkpoint.model_state) == set(bn_checkpoint.model.state_dict())


def test_scan_a_folder_holding_a_sharded_checkpoint(tmp_path, bn_checkpoint):
    write_sharded(tmp_path / "hf", bn_checkpoint.model.state_dict())
    code, out, err = run("scan", tmp_path / "hf", *bn_checkpoint.cli_args, "--method", "clp", "--format", "json")
    assert code in (0, 1), err
    assert json.loads(out)["checkpoint"] == str(tmp_path / "hf")  # one checkpoint, not one per shard


def picture_folder(root: Path, sides) -> Path:
    rng = np.random.default_rng(0)
    for i, side in enumerate(sides):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_a_folder_of_several_sizes_names_them_and_suggests_image_size(tmp_path, bn_checkpoint):
    root = picture_folder(tmp_path / "imgs", [8, 8, 12, 16])
    code, out, err = run("scan", bn_checkpoint.path, *bn_checkpoint.cli_args, "--data", root)
    assert code == 2 and out == ""
    line = error_line(err)
    assert "3 different sizes: 8x8 (2)" in line and "--image-size" in line


def test_image_size_loads_a_folder_of_several_sizes(tmp_path, bn_checkpoint):
    root = picture_folder(tmp_path / "imgs", [8, 8, 12, 16] * 4)
    code, out, err = run("scan", bn_checkpoint.path, *bn_checkpoint.cli_args, "--data", root, "--image-size", "8", "--format", "json")
    assert code in (0, 1), err
    assert "converted the 3-channel images to L" in err  # an RGB folder for the one-channel smallcnn
    assert json.loads(out)["samples"] == 16
    code, out, err = run("eval", bn_checkpoint.path, *bn_checkpoint.cli_args, "--data", root, "--image-size", "8,8")
    assert code == 0, err


def test_image_size_runs_far_larger_images_when_asked(tmp_path):
    from bdprune.archs import build_model

    model, _ = build_model("resnet18", None, arch_args={"width": "4"})
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    np.savez(tmp_path / "big.npz", images=np.zeros((4, 3, 224, 224), dtype=np.uint8), labels=np.zeros(4, dtype=np.int64))
    base = ["eval", tmp_path / "r18.pt", "--arch", "resnet18", "--data", tmp_path / "big.npz"]
    code, _, err = run(*base)
    assert code == 2 and "3x32x32" in error_line(err)
    for size in ("32", "224"):
        code, _, err = run(*base, "--image-size", size)
        assert code == 0, err
