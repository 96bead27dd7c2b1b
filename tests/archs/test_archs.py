"""Tests for bdprune.archs: built-in models, name lookup, checkpoint-shape inference and
external (torchvision/timm/file/module) architecture specs."""

from __future__ import annotations

import sys
import textwrap
import types

import pytest
import torch
from torch import nn

from bdprune.archs import ARCHS, ArchSpec, build_model, parse_arch_args, parse_literal
from bdprune.archs.cifar_resnet import mnist_resnet, resnet18
from bdprune.archs.preact_resnet import preactresnet18
from bdprune.archs.smallcnn import smallcnn
from bdprune.errors import BdpruneError

BUILTINS = ["mnist_resnet", "preactresnet18", "resnet18", "resnet34", "resnet50", "smallcnn", "vgg11_bn1d", "vgg16_bn"]


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


def test_registry_lists_all_builtins_with_summaries():
    assert ARCHS.names() == sorted(BUILTINS)
    for name in BUILTINS:
        spec = ARCHS.get(name)
        assert isinstance(spec, ArchSpec) and spec.name == name
        assert spec.summary and "\n" not in spec.summary
        assert spec.factory.__doc__
        assert len(spec.input_shape) == 3


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_builds_and_runs(name):
    model, spec = build_model(name, None, num_classes=7)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(2, *spec.input_shape))
    assert out.shape == (2, 7)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_default_input_shapes():
    assert ARCHS.get("resnet18").input_shape == (3, 32, 32)
    assert ARCHS.get("smallcnn").input_shape == (1, 28, 28)
    assert ARCHS.get("mnist_resnet").input_shape == (1, 28, 28)


@pytest.mark.parametrize("name", ["resnet18", "vgg16_bn", "preactresnet18"])
def test_cifar_models_take_28x28_single_channel(name):
    model, spec = build_model(name, None, arch_args={"in_channels": "1"})
    assert spec.input_shape[0] == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_resnet18_state_dict_keys_match_kuangliu():
    keys = set(resnet18().state_dict())
    for key in [
        "conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
        "layer1.0.bn1.bias", "layer1.0.conv2.weight", "layer1.0.bn2.running_var",
        "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var",
        "layer4.1.bn2.num_batches_tracked", "linear.weight", "linear.bias",
    ]:
        assert key in keys, key
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)
    assert "conv1.bias" not in keys
    assert len([k for k in keys if k.endswith(".weight")]) == 41
    assert sum(p.numel() for p in resnet18().parameters()) == 11_173_962


def test_resnet50_and_preact_keys():
    keys50 = set(ARCHS.get("resnet50").factory().state_dict())
    assert {"layer1.0.conv3.weight", "layer1.0.bn3.running_mean", "layer1.0.shortcut.0.weight",
            "layer1.0.shortcut.1.weight", "linear.weight"} <= keys50
    assert ARCHS.get("resnet50").factory().linear.in_features == 2048
    keys = set(preactresnet18().state_dict())
    assert {"conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.weight",
            "layer2.0.shortcut.0.weight", "linear.weight"} <= keys
    assert "layer2.0.shortcut.1.weight" not in keys and "bn1.weight" not in keys
    assert "bn.weight" not in keys
    assert "bn.weight" in preactresnet18(final_bn=True).state_dict()


def test_smallcnn_has_batchnorm1d_after_linear():
    model = smallcnn()
    names = [n for n, _ in model.named_modules()]
    assert names.index("fc1") < names.index("bn4") < names.index("fc2")
    assert isinstance(model.bn4, nn.BatchNorm1d) and isinstance(model.fc1, nn.Linear)
    assert model.fc2.out_features == 10


def test_mnist_resnet_is_small():
    assert sum(p.numel() for p in mnist_resnet().parameters()) < 300_000


def test_infers_num_classes_and_in_channels():
    state = resnet18(num_classes=43, in_channels=1, width=8).state_dict()
    model, spec = build_model("resnet18", state)
    assert model.linear.out_features == 43 and model.conv1.in_channels == 1
    assert spec.input_shape == (1, 32, 32)
    model.load_state_dict(state)  # strict: the shapes all match

    state = smallcnn(num_classes=3, in_channels=3).state_dict()
    model, spec = build_model("smallcnn", state)
    assert model.fc2.out_features == 3 and spec.input_shape == (3, 28, 28)
    model.load_state_dict(state)


def test_given_num_classes_wins_and_missing_key_keeps_default():
    state = mnist_resnet(num_classes=5).state_dict()
    model, _ = build_model("mnist_resnet", state, num_classes=12)
    assert model.linear.out_features == 12
    del state["linear.weight"]
    model, _ = build_model("mnist_resnet", state)
    assert model.linear.out_features == 10


def test_preact_final_bn_and_width_follow_checkpoint():
    state = preactresnet18(num_classes=5, width=8, final_bn=True).state_dict()
    model, _ = build_model("preactresnet18", state)
    model.load_state_dict(state)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    # an explicit --arch-arg beats what the checkpoint suggests
    model, _ = build_model("preactresnet18", state, arch_args={"final_bn": "False"})
    assert model.bn is None


def test_unknown_name_suggests_close_ones():
    with pytest.raises(BdpruneError) as err:
        build_model("resnet19", None)
    assert "resnet18" in str(err.value)
    assert "bdprune archs" in str(err.value)


def test_names_by_pattern():
    assert ARCHS.names("resnet*") == ["resnet18", "resnet34", "resnet50"]


def test_arch_args_parsing():
    assert parse_literal("3") == 3 and parse_literal("0.5") == 0.5
    assert parse_literal("True") is True and parse_literal("None") is None
    assert parse_literal("[1, 2]") == [1, 2] and parse_literal("'x'") == "x"
    assert parse_literal("relu") == "relu" and parse_literal("a b(") == "a b("
    assert parse_arch_args({"width": "8", "act": "gelu"}) == {"width": 8, "act": "gelu"}


def test_builtin_arch_arg_checks():
    model, _ = build_model("mnist_resnet", None, arch_args={"width": "8", "num_classes": "4"})
    assert model.conv1.out_channels == 8 and model.linear.out_features == 4
    with pytest.raises(BdpruneError, match="takes no argument 'depth'"):
        build_model("mnist_resnet", None, arch_args={"depth": "3"})
    with pytest.raises(BdpruneError, match="given twice"):
        build_model("mnist_resnet", None, num_classes=3, arch_args={"num_classes": "4"})
    with pytest.raises(BdpruneError, match="positive integer"):
        build_model("mnist_resnet", None, arch_args={"num_classes": "many"})


FACTORY_SOURCE = textwrap.dedent(
    '''
    from torch import nn

    def make(num_classes=10, depth=1):
        """A tiny conv net."""
        layers = [nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)]
        return nn.Sequential(*layers)

    def fixed(**kwargs):
        return nn.Sequential(nn.Flatten(), nn.Linear(8, 2))

    def no_classes():
        return nn.Linear(8, 6)

    make.input_shape = (2, 16, 16)
    '''
)


def test_file_factory_with_arch_arg(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(FACTORY_SOURCE)
    model, spec = build_model(f"{path}:make", None, arch_args={"depth": "3"})
    assert spec.input_shape == (2, 16, 16) and spec.summary == "A tiny conv net."
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert not model.training
    state = model.state_dict()
    state["11.weight"] = torch.zeros(6, 4)
    state["11.bias"] = torch.zeros(6)
    model, _ = build_model(f"{path}:make", state, arch_args={"depth": "3"})
    assert model[11].out_features == 6
    # a factory without num_classes is called without it
    model, _ = build_model(f"{path}:no_classes", {"weight": torch.zeros(3, 8)})
    assert model.out_features == 6
    model, _ = build_model(f"{path}:no_classes", None, num_classes=3)
    assert model.out_features == 6


def test_file_factory_errors(tmp_path):
    path = tmp_path / "my_net2.py"
    path.write_text(FACTORY_SOURCE)
    with pytest.raises(BdpruneError, match="no such file"):
        build_model(f"{tmp_path / 'absent.py'}:make", None)
    with pytest.raises(BdpruneError, match="did you mean make"):
        build_model(f"{path}:mak", None)
    with pytest.raises(BdpruneError, match="takes no argument 'width'"):
        build_model(f"{path}:make", None, arch_args={"width": "2"})
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(BdpruneError, match="boom"):
        build_model(f"{bad}:make", None)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "bdprune_testpkg_xyz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "bdprune_testpkg_xyz"
    for name in [n for n in sys.modules if n.startswith("bdprune_testpkg_xyz")]:
        del sys.modules[name]


def test_module_factory(user_package):
    model, spec = build_model(f"{user_package}.models:make", None, num_classes=5,
                              arch_args={"depth": "2"})
    assert model[-1].out_features == 5 and spec.name == f"{user_package}.models:make"
    with torch.no_grad():
        assert model(torch.randn(1, *spec.input_shape)).shape == (1, 5)
    # **kwargs factories get num_classes/arch args too
    model, _ = build_model(f"{user_package}.models:fixed", None, num_classes=2, arch_args={"x": "1"})
    assert isinstance(model, nn.Sequential)


def test_module_factory_errors(user_package):
    with pytest.raises(BdpruneError, match="no module named") as err:
        build_model("bdprune_no_such_pkg.models:make", None)
    assert "PYTHONPATH" in str(err.value)
    with pytest.raises(BdpruneError, match="has no attribute 'nope'"):
        build_model(f"{user_package}.models:nope", None)
    with pytest.raises(BdpruneError, match="cannot read architecture"):
        build_model(f"{user_package}.models:", None)


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_missing_optional_package(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(BdpruneError) as err:
        build_model(f"{package}:resnet18", None)
    assert f"pip install {package}" in str(err.value)


def test_torchvision_and_timm_calls(monkeypatch):
    calls = []

    def get_model(name, **config):
        calls.append(("tv", name, config))
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, config.get("num_classes", 1000)))

    def create_model(name, pretrained=True, **kwargs):
        calls.append(("timm", name, pretrained, kwargs))
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, kwargs.get("num_classes", 1000)))

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(get_model=get_model, list_models=lambda: ["resnet18"])
    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.is_model = lambda name: name == "resnet18"
    timm.list_models = lambda: ["resnet18"]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "timm", timm)

    _, spec = build_model("torchvision:resnet18", None)
    assert calls[-1] == ("tv", "resnet18", {"weights": None})
    assert spec.input_shape == (3, 224, 224)
    build_model("torchvision:resnet18", None, num_classes=7)
    assert calls[-1] == ("tv", "resnet18", {"weights": None, "num_classes": 7})
    with pytest.raises(BdpruneError, match="torchvision has no model 'resnet19'.*resnet18"):
        build_model("torchvision:resnet19", None)

    model, _ = build_model("timm:resnet18", {"2.weight": torch.zeros(9, 4)})
    assert calls[-1] == ("timm", "resnet18", False, {"num_classes": 9})
    assert model[2].out_features == 9
    with pytest.raises(BdpruneError, match="timm has no model"):
        build_model("timm:resnet19", None)
