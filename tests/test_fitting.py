"""Tests for bdprune.fitting: which key prefix a checkpoint's model sits under, what is left out,
and which other architecture a mismatched checkpoint fits."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict

import pytest
import torch
from torch import nn

from bdprune.archs import build_model
from bdprune.checkpoint import load_checkpoint
from bdprune.errors import BdpruneError
from bdprune.fitting import candidate_prefixes, other_fit
from bdprune.scan import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prefixed(state, prefix: str) -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in state.items())


def save(path, obj):
    torch.save(obj, path)
    return path


def test_candidate_prefixes_are_the_dotted_heads():
    keys = ["model.model.conv1.weight", "model.model.layer1.0.bn1.bias", "criterion.weight", "scale"]
    assert candidate_prefixes(keys) == {
        "model.", "model.model.", "model.model.conv1.", "model.model.layer1.", "criterion.",
    }


def test_entries_outside_the_prefix_are_left_out_with_a_note(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    extras = {"criterion.weight": torch.ones(10), "loss_fn.pos_weight": torch.ones(1), "mixup.lam": torch.ones(()),
              "metrics.acc.total": torch.zeros(()), "temperature": torch.ones(())}
    path = save(tmp_path / "x.pt", {**prefixed(state, "net."), **extras})
    loaded = load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    for key, value in state.items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.checkpoint.outside == list(extras)
    assert loaded.checkpoint.notes[-1] == (
        "ignoring 5 entries outside 'net.' that --arch smallcnn does not use: criterion.weight, loss_fn.pos_weight, mixup.lam and 2 more"
    )


def test_an_unknown_entry_inside_the_prefix_is_still_an_error(tmp_path, bn_checkpoint):
    state = prefixed(bn_checkpoint.model.state_dict(), "model.")
    state["model.extra.weight"] = torch.zeros(2)
    path = save(tmp_path / "x.ckpt", {"state_dict": state})
    with pytest.raises(BdpruneError) as err:
        load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert "does not fit --arch smallcnn (keys under 'model.'): 1 unexpected: extra.weight" in str(err.value)


def test_two_copies_that_both_fit_are_ambiguous(tmp_path, bn_checkpoint, make_bn_model):
    """A teacher's EMA copy is never mixed in or chosen silently."""
    state = bn_checkpoint.model.state_dict()
    ema = make_bn_model(seed=1).state_dict()
    path = save(tmp_path / "x.ckpt", {"state_dict": {**prefixed(state, "model."), **prefixed(ema, "ema.")}})
    with pytest.raises(BdpruneError) as err:
        load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    message = str(err.value)
    assert "several key prefixes ('ema.', 'model.')" in message
    assert "--strip-prefix model." in message and "--strip-prefix ema." in message
    for prefix, expected in (("model.", state), ("ema.", ema)):
        loaded = load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args, strip_prefix=prefix)
        assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in expected.items())
        assert f"stripping key prefix {prefix!r} (--strip-prefix)" in loaded.checkpoint.notes


def test_unprefixed_weights_beside_a_prefixed_copy_are_ambiguous_too(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    path = save(tmp_path / "x.pt", {**state, **prefixed(state, "teacher.")})
    with pytest.raises(BdpruneError, match=r"several key prefixes \('', 'teacher.'\).*--strip-prefix ''"):
        load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    loaded = load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args, strip_prefix="teacher.")
    assert loaded.checkpoint.prefix == "teacher." and len(loaded.checkpoint.outside) == len(state)


def test_strip_prefix_that_no_key_has_is_refused(tmp_path, bn_checkpoint):
    path = save(tmp_path / "x.pt", prefixed(bn_checkpoint.model.state_dict(), "model."))
    with pytest.raises(BdpruneError) as err:
        load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args, strip_prefix="net.")
    assert str(err.value).startswith(str(path))
    assert "no key starts with --strip-prefix 'net.'" in str(err.value) and "'model.'" in str(err.value)


def test_strip_prefix_replaces_the_detected_parallel_prefix(tmp_path, bn_checkpoint):
    path = save(tmp_path / "x.pt", prefixed(bn_checkpoint.model.state_dict(), "module."))
    assert load_checkpoint(path).prefix == "module."
    with pytest.raises(BdpruneError, match="does not fit --arch smallcnn: "):
        load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args, strip_prefix="")


def test_a_plain_state_dict_keeps_its_notes_empty(bn_checkpoint):
    loaded = load_model(bn_checkpoint.path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert loaded.checkpoint.prefix == "" and loaded.checkpoint.notes == [] and loaded.checkpoint.outside == []


# --- naming the architecture the keys fit ----------------------------------------------------------

def test_keys_of_another_builtin_name_it(tmp_path):
    model, _ = build_model("resnet34", None, arch_args={"width": "4"})
    path = save(tmp_path / "r34.pt", model.state_dict())
    with pytest.raises(BdpruneError) as err:
        load_model(path, "resnet18")
    message = str(err.value)
    assert "does not fit --arch resnet18" in message and "unexpected: layer1.2." in message
    assert "its keys fit --arch resnet34 (pass --arch resnet34;" in message
    assert "bdprune archs" in message


def test_keys_of_another_builtin_under_a_lightning_prefix_name_it(tmp_path):
    model, _ = build_model("preactresnet18", None, arch_args={"width": "4"})
    path = save(tmp_path / "last.ckpt", {"state_dict": prefixed(model.state_dict(), "model."), "epoch": 1})
    with pytest.raises(BdpruneError) as err:
        load_model(path, "resnet18")
    assert "(keys under 'model.')" in str(err.value) and "its keys fit --arch preactresnet18" in str(err.value)


def test_only_shapes_differing_names_no_other_architecture(bn_checkpoint):
    with pytest.raises(BdpruneError) as err:
        load_model(bn_checkpoint.path, "smallcnn")  # width 8 checkpoint, default width 32
    assert "mis-shaped" in str(err.value) and "its keys fit" not in str(err.value)


def test_keys_that_fit_nothing_name_nothing(tmp_path):
    path = save(tmp_path / "odd.pt", {"encoder.proj.weight": torch.zeros(4, 4), "encoder.proj.bias": torch.zeros(4)})
    with pytest.raises(BdpruneError) as err:
        load_model(path, "resnet18")
    assert "does not fit --arch resnet18" in str(err.value) and "its keys fit" not in str(err.value)


class TorchvisionLikeResNet(nn.Module):
    """torchvision's ResNet naming (``fc``, ``downsample``), which the built-in CIFAR ResNets lack."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False))
        self.downsample = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, num_classes)


def fake_torchvision(monkeypatch, calls: list) -> None:
    def get_model(name, weights=None, **kwargs):
        calls.append(name)
        return TorchvisionLikeResNet(**kwargs)

    module = types.ModuleType("torchvision")
    module.models = types.SimpleNamespace(get_model=get_model, list_models=lambda: ["alexnet", "resnet18", "resnet34", "vgg16"])
    monkeypatch.setitem(sys.modules, "torchvision", module)


def test_a_torchvision_state_dict_loaded_as_the_builtin_names_torchvision(tmp_path, monkeypatch):
    calls: list = []
    fake_torchvision(monkeypatch, calls)
    path = save(tmp_path / "tv.pth", TorchvisionLikeResNet(num_classes=10).state_dict())
    with pytest.raises(BdpruneError) as err:
        load_model(path, "resnet18")
    assert "its keys fit --arch torchvision:resnet18 or torchvision:resnet34" in str(err.value)
    assert calls == ["resnet18", "resnet34"]  # the same name and its family, nothing else


def test_no_suggestion_of_a_package_that_does_not_import(tmp_path, monkeypatch):
    calls: list = []
    fake_torchvision(monkeypatch, calls)
    path = save(tmp_path / "tv.pth", TorchvisionLikeResNet(num_classes=10).state_dict())
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now fails
    with pytest.raises(BdpruneError) as err:
        load_model(path, "resnet18")
    assert "does not fit --arch resnet18" in str(err.value) and "its keys fit" not in str(err.value)


def test_other_fit_builds_on_the_meta_device(tmp_path):
    model, _ = build_model("resnet50", None, arch_args={"width": "4"})
    assert other_fit(model.state_dict(), "resnet18") == "resnet50"


def test_a_real_torchvision_resnet18_loaded_as_the_builtin_names_it(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = save(tmp_path / "tv.pth", torchvision.models.resnet18(weights=None, num_classes=10).state_dict())
    with pytest.raises(BdpruneError, match="its keys fit --arch torchvision:resnet18"):
        load_model(path, "resnet18")
