"""Tests for bdprune.scan.check_input: images are fitted to the model (channels of picture files)
and held to the input size its architecture declares before any heavy work."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from bdprune.archs import build_model
from bdprune.checkpoint import Checkpoint
from bdprune.cli import app
from bdprune.data import ImageSet, load_images
from bdprune.errors import BdpruneError
from bdprune.options import ScanSettings
from bdprune.scan import (
    LoadedModel,
    check_input,
    load_model,
    load_samples,
    scan_loaded,
    score_model,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BNP = ScanSettings(method="bnp", device="cpu").resolve(has_data=True)


@pytest.fixture
def cifar_resnet(tmp_path) -> Path:
    """The built-in CIFAR resnet18 (declares 3x32x32) at width 4, saved."""
    model, _ = build_model("resnet18", None, arch_args={"width": "4"})
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    return path


def images(n: int, c: int, h: int, w: int, tmp_path: Path, **fields) -> ImageSet:
    return ImageSet(torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0)), torch.zeros(n, dtype=torch.long),
                    tmp_path / "data.npz", **fields)


def test_far_larger_images_than_declared_are_refused_before_any_heavy_work(cifar_resnet, tmp_path, monkeypatch):
    loaded = load_model(cifar_resnet, "resnet18")
    monkeypatch.setattr("bdprune.scan.collect_stats", lambda *a, **k: pytest.fail("the statistics pass ran"))
    with pytest.raises(BdpruneError) as err:
        scan_loaded(loaded, images(4, 3, 224, 224, tmp_path), BNP, show_progress=False)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "data.npz"))
    assert "images are 224x224, 49x the area of the 3x32x32 input --arch resnet18 declares" in message
    assert "--image-size 32,32" in message and "--image-size 224,224" in message


def test_images_resized_on_request_run_at_that_size(cifar_resnet, tmp_path):
    loaded = load_model(cifar_resnet, "resnet18")
    data = images(2, 3, 224, 224, tmp_path, resized=(224, 224))
    assert check_input(loaded, data) is data


@pytest.mark.parametrize("side", [16, 32, 64])
def test_sizes_a_global_pool_takes_pass(cifar_resnet, tmp_path, side):
    loaded = load_model(cifar_resnet, "resnet18")
    data = images(2, 3, side, side, tmp_path)
    assert check_input(loaded, data) is data


def test_a_size_the_model_cannot_take_names_the_declared_size(bn_checkpoint, tmp_path):
    loaded = load_model(bn_checkpoint.path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    with pytest.raises(BdpruneError) as err:
        check_input(loaded, images(2, 1, 1, 1, tmp_path))
    message = str(err.value)
    assert "images of shape (1, 1, 1) do not fit the model" in message and "--arch smallcnn declares 1x28x28" in message
    assert "--image-size 28,28" in message


FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))


    def undeclared(num_classes=10):
        return Net(num_classes)


    def timm_like(num_classes=10):
        net = Net(num_classes)
        net.pretrained_cfg = {"input_size": (3, 16, 16), "num_classes": num_classes}
        return net
    """
)


def test_a_timm_pretrained_cfg_declares_the_input_size(tmp_path):
    (tmp_path / "nets.py").write_text(FACTORIES)
    model, spec = build_model(f"{tmp_path / 'nets.py'}:timm_like", None)
    assert spec.input_shape == (3, 16, 16) and spec.input_declared
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", f"{tmp_path / 'nets.py'}:timm_like")
    with pytest.raises(BdpruneError, match="images are 64x64, 16x the area of the 3x16x16 input"):
        check_input(loaded, images(2, 3, 64, 64, tmp_path))


def test_a_default_size_holds_nothing_to_it(tmp_path):
    (tmp_path / "nets.py").write_text(FACTORIES)
    arch = f"{tmp_path / 'nets.py'}:undeclared"
    model, spec = build_model(arch, None)
    assert not spec.input_declared
    torch.save(model.state_dict(), tmp_path / "m.pt")
    data = images(2, 3, 256, 256, tmp_path)
    assert check_input(load_model(tmp_path / "m.pt", arch), data) is data


def test_an_rgb_folder_becomes_greyscale_for_a_one_channel_model(bn_checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = load_images(tmp_path / "imgs")
    loaded = load_model(bn_checkpoint.path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    fitted = check_input(loaded, data)
    assert fitted.images.shape == (6, 1, 8, 8)
    first = np.asarray(Image.open(folder / "0.png").convert("L"))
    assert torch.equal(fitted.images[0, 0], torch.from_numpy(first.copy()).float() / 255)
    result = scan_loaded(loaded, data, BNP, show_progress=False)
    assert any("converted the 3-channel images to L" in note for note in result.notes)


def test_cli_scan_of_far_larger_images_is_one_error_line(cifar_resnet, tmp_path):
    np.savez(tmp_path / "big.npz", images=np.zeros((4, 3, 224, 224), dtype=np.uint8), labels=np.zeros(4, dtype=np.int64))
    result = CliRunner().invoke(app, ["scan", str(cifar_resnet), "--arch", "resnet18", "--data", str(tmp_path / "big.npz")])
    assert result.exit_code == 2
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "big.npz" in line and "3x32x32" in line and "--image-size 32,32" in line
    assert "Traceback" not in result.stderr


# --- the loaders and the scan step ------------------------------------------------------------

def loaded_of(model: nn.Module, name: str = "m.pt") -> LoadedModel:
    return LoadedModel(model.eval(), Checkpoint(path=Path(name), tensors=dict(model.state_dict())), "smallcnn", None)


def test_score_model_flags_at_the_resolved_u_and_names_its_inputs(bn_model, clean_images):
    data = ImageSet(clean_images, None, "clean.npz")
    result = score_model(loaded_of(bn_model), data, ScanSettings(device="cpu", u=1.0).resolve(has_data=True), show_progress=False)
    assert result.method == "bnp" and result.u == 1.0 and result.samples == len(clean_images) and result.data == "clean.npz"
    assert result.verdict is None and result.checkpoint == "m.pt"
    for layer in result.layers:
        scores = torch.tensor(layer.scores, dtype=torch.float64)
        assert layer.flagged == (scores > scores.mean() + 1.0 * scores.std()).nonzero().flatten().tolist()


def test_scan_loaded_adds_the_verdict_and_data_free_methods_ignore_data(bn_model, clean_images):
    data = ImageSet(clean_images, None, "clean.npz")
    result = scan_loaded(loaded_of(bn_model), data, ScanSettings(method="clp", device="cpu").resolve(has_data=True), show_progress=False)
    assert result.verdict is not None and result.verdict.rule == "clp-max-robust-z"
    assert result.samples == 0 and result.data is None and "clp is data-free; --data was not used" in result.notes


def test_refusals_name_the_checkpoint(bn_model, clean_images):
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(BdpruneError, match="m.pt: the model has no BatchNorm layers"):
        score_model(loaded_of(plain), None, ScanSettings(device="cpu").resolve(has_data=False))
    broken = loaded_of(copy.deepcopy(bn_model))
    with torch.no_grad():
        broken.model.bn1.running_var[0] = float("nan")
    with pytest.raises(BdpruneError, match="m.pt: bn1.running_var holds NaN"):
        score_model(broken, None, ScanSettings(device="cpu").resolve(has_data=False))
    with pytest.raises(BdpruneError, match="--method bnp needs --data"):
        score_model(loaded_of(bn_model), None, ScanSettings(method="bnp", device="cpu").resolve(has_data=False))


def test_load_model_and_samples(bn_checkpoint, images_npz):
    loaded = load_model(bn_checkpoint.path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert not loaded.model.training and loaded.in_channels == 1 and loaded.num_classes == 10
    assert torch.equal(loaded.model.state_dict()["bn1.running_mean"], bn_checkpoint.model.state_dict()["bn1.running_mean"])
    drawn = load_samples(images_npz, 5, seed=1)
    assert len(drawn) == 5 and torch.equal(drawn.images, load_samples(images_npz, 5, seed=1).images)
    with pytest.raises(BdpruneError, match="--arch is required"):
        load_model(bn_checkpoint.path, "")
