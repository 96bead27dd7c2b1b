"""Tests for bdprune.pairing: which conv/linear feeds each BatchNorm, by data flow.

The ground truth comes from running the model with hooks (``_slow_reference.dataflow_pairs``):
a BN is paired with a module only when its input tensor *is* that module's output tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _slow_reference import clp_reference, dataflow_pairs
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bdprune.archs import ARCHS, build_model
from bdprune.archs.preact_resnet import preactresnet18
from bdprune.errors import BdpruneError
from bdprune.methods import ScoreContext
from bdprune.methods.clp import CLP
from bdprune.pairing import pair_conv_bn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_ARGS = {  # keep the built-ins tiny; vgg16_bn has no width knob
    "resnet18": {"width": "4"}, "resnet34": {"width": "4"}, "resnet50": {"width": "4"},
    "preactresnet18": {"width": "4"}, "mnist_resnet": {"width": "4"}, "smallcnn": {"width": "4"},
}


def registration_order_pairs(model: nn.Module) -> dict[str, str]:
    """The official code's rule: each BN takes the last Conv2d registered before it."""
    pairs, last = {}, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            last = name
        elif isinstance(module, _BatchNorm) and last is not None:
            pairs[name] = last
    return pairs


def check_against_dataflow(model: nn.Module, example: torch.Tensor):
    pairing = pair_conv_bn(model)
    pairs, unpaired = dataflow_pairs(model, example)
    assert pairing.pairs == pairs
    assert set(pairing.unpaired) == unpaired
    assert all(reason for reason in pairing.unpaired.values())
    return pairing


def test_preactresnet18_pairs_by_data_flow():
    model = preactresnet18(num_classes=10, in_channels=3, width=4).eval()
    pairing = check_against_dataflow(model, torch.rand(2, 3, 32, 32))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    for block in blocks:  # bn2 is fed by the block's conv1
        assert pairing.pairs[f"{block}.bn2"] == f"{block}.conv1"
    # bn1 reads the block input: the stem conv for the very first block, an addition elsewhere
    assert pairing.pairs["layer1.0.bn1"] == "conv1"
    for block in blocks[1:]:
        assert f"{block}.bn1" in pairing.unpaired
        assert "add" in pairing.unpaired[f"{block}.bn1"]
    assert len(pairing.pairs) + len(pairing.unpaired) == 16
    # the official registration-order rule pairs every bn1 with the previous block's conv2
    naive = registration_order_pairs(model)
    assert naive["layer2.0.bn1"] == "layer1.1.conv2" and "layer2.0.bn1" not in pairing.pairs


def test_preactresnet18_final_bn_is_fed_by_an_addition():
    model = preactresnet18(num_classes=10, in_channels=3, width=4, final_bn=True).eval()
    pairing = check_against_dataflow(model, torch.rand(2, 3, 32, 32))
    assert "bn" in pairing.unpaired and "bn" not in pairing.pairs


@pytest.mark.parametrize("name", ARCHS.names())
def test_every_builtin_pairs_exactly_as_its_data_flows(name):
    model, spec = build_model(name, None, arch_args=SMALL_ARGS.get(name))
    check_against_dataflow(model, torch.rand(2, *spec.input_shape))


class Crosswise(nn.Module):
    """Registered conv_b, bn_a, conv_a, bn_b; runs conv_a -> bn_a, then conv_b -> bn_b.
    The registration-order rule would pair bn_a with conv_b and bn_b with conv_a."""

    def __init__(self):
        super().__init__()
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        a = torch.relu(self.bn_a(self.conv_a(x)))
        b = torch.relu(self.bn_b(self.conv_b(a)))
        return self.head(b.mean(dim=(2, 3)))


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                if module.weight is not None:
                    module.weight.copy_(0.5 + torch.rand(module.num_features, generator=g))
                module.running_var.copy_(0.2 + torch.rand(module.num_features, generator=g))
    return model.eval()


def test_out_of_order_registration_pairs_each_bn_with_its_true_feeder():
    model = randomized(Crosswise())
    assert registration_order_pairs(model) == {"bn_a": "conv_b", "bn_b": "conv_a"}
    pairing = check_against_dataflow(model, torch.rand(2, 4, 6, 6))
    assert pairing.pairs == {"bn_a": "conv_a", "bn_b": "conv_b"}
    assert pairing.unpaired == {}
    # and CLP scores each BN through its true feeder
    scores = CLP().score(ScoreContext(model=model, stats=None, device=torch.device("cpu")))
    reference = clp_reference(model, {"bn_a": "conv_a", "bn_b": "conv_b"})
    wrong = clp_reference(model, {"bn_a": "conv_b", "bn_b": "conv_a"})
    for name in ("bn_a", "bn_b"):
        np.testing.assert_allclose(scores[name].numpy(), reference[name], rtol=1e-6, atol=0)
        assert not np.allclose(reference[name], wrong[name], rtol=1e-3)


class Mixed(nn.Module):
    """Every way a BN can be fed: by the input, a conv through a ReLU, a conv directly, a Linear,
    the same BN twice, and a BN that is never called."""

    def __init__(self):
        super().__init__()
        self.unused = nn.BatchNorm2d(3)
        self.bn_in = nn.BatchNorm2d(3)
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.bn_relu = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 5, 1)
        self.bn_twice = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 6)
        self.bn_fc = nn.BatchNorm1d(6)
        self.conv3 = nn.Conv2d(5, 5, 1)
        self.bn_conv3 = nn.BatchNorm2d(5)

    def forward(self, x):
        x = self.bn_in(x)
        x = self.bn_relu(torch.relu(self.conv1(x)))
        x = self.bn_twice(self.conv2(x))
        x = self.bn_twice(x)
        x = self.bn_conv3(self.conv3(x))
        return self.bn_fc(self.fc(x.mean(dim=(2, 3))))


def test_every_other_feeder_is_reported_unpaired_with_a_reason():
    model = Mixed().eval()
    pairing = check_against_dataflow(model, torch.rand(3, 3, 5, 5))
    assert pairing.pairs == {"bn_conv3": "conv3", "bn_fc": "fc"}
    assert set(pairing.unpaired) == {"unused", "bn_in", "bn_relu", "bn_twice"}
    assert "never called" in pairing.unpaired["unused"]
    assert "more than once" in pairing.unpaired["bn_twice"]
    assert "placeholder" in pairing.unpaired["bn_in"]  # the network input
    assert "relu" in pairing.unpaired["bn_relu"]


def test_untraceable_model_is_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            if x.sum() > 0:  # control flow on data: torch.fx cannot trace it
                return self.bn(self.conv(x))
            return x

    with pytest.raises(BdpruneError, match="torch.fx cannot trace") as info:
        pair_conv_bn(DataDependent())
    assert "--method bnp or ep" in str(info.value)


class BatchNormAct(nn.BatchNorm2d):
    """A home-made BatchNorm2d subclass that applies its activation itself, as timm's
    BatchNormAct2d does: traced through, it would leave only F.batch_norm calls behind."""

    def __init__(self, num_features: int):
        super().__init__(num_features)
        self.act = nn.Hardswish()

    def forward(self, x):
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(x)


class WithBatchNormAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct(6)
        self.conv_pw = nn.Conv2d(6, 4, 1, bias=False)
        self.bn2 = BatchNormAct(4)
        self.bn3 = nn.BatchNorm2d(4)  # a plain BN fed by bn2's activation, not by a conv
        self.classifier = nn.Linear(4, 3)

    def forward(self, x):
        x = self.bn3(self.bn2(self.conv_pw(self.bn1(self.conv_stem(x)))))
        return self.classifier(x.mean(dim=(2, 3)))


def test_a_batchnorm_subclass_with_an_activation_pairs_with_its_conv():
    model = randomized(WithBatchNormAct())
    pairing = check_against_dataflow(model, torch.rand(2, 3, 6, 6))
    assert pairing.pairs == {"bn1": "conv_stem", "bn2": "conv_pw"}
    assert "call_module bn2" in pairing.unpaired["bn3"]
    scores = CLP().score(ScoreContext(model=model, stats=None, device=torch.device("cpu")))
    reference = clp_reference(model, pairing.pairs)
    assert set(scores) == {"bn1", "bn2"}
    for name in scores:
        np.testing.assert_allclose(scores[name].numpy(), reference[name], rtol=1e-6, atol=0)


def test_clp_pairs_timm_batchnormact2d():
    timm = pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    model = randomized(timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10))
    pairing = pair_conv_bn(model)
    bns = [name for name, m in model.named_modules() if isinstance(m, BatchNormAct2d)]
    assert bns and all(name in pairing.pairs for name in bns)
    assert pairing.pairs["bn1"] == "conv_stem"
    scores = CLP().score(ScoreContext(model=model, stats=None, device=torch.device("cpu")))
    assert set(scores) == set(pairing.pairs) and all(torch.isfinite(s).all() for s in scores.values())
