"""bdprune.options: a scan's settings checked and resolved in one place, before any work."""

from __future__ import annotations

import pickle

import pytest
import torch

from bdprune.errors import BdpruneError
from bdprune.methods import METHODS
from bdprune.normalize import NORMALIZATIONS
from bdprune.options import ScanSettings, resolve_device


def test_resolve_picks_the_method_its_threshold_and_the_values():
    r = ScanSettings(normalize="cifar10", device="cpu", seed=3).resolve(has_data=True)
    assert r.method is METHODS.get("bnp") and r.method_reason == "default: --data was given" and r.u == 3.0
    assert r.device == torch.device("cpu") and r.normalize == NORMALIZATIONS["cifar10"] and r.seed == 3
    free = ScanSettings(device="cpu").resolve(has_data=False)
    assert free.method is METHODS.get("clp") and "data-free" in free.method_reason
    anp = ScanSettings(method="anp", device="cpu", method_args={"iterations": "7"}).resolve(has_data=True)
    assert anp.u == METHODS.get("anp").default_u and anp.method_options.options["iterations"] == 7
    assert ScanSettings(u=1.5, device="cpu").resolve(has_data=True).u == 1.5
    given = torch.device("cpu")
    assert ScanSettings(device="cuda:7").resolve(has_data=True, device=given).device is given  # the model's own device wins


@pytest.mark.parametrize(("settings", "problem"), [
    (dict(u=float("nan")), "--u must be a finite number"),
    (dict(u=-1.0), "--u must be a finite number"),
    (dict(seed=2**64), "--seed"),
    (dict(batch_size=0), "--batch-size must be at least 1"),
    (dict(device="tpu"), "unknown --device 'tpu'"),
    (dict(device="mps"), "unsupported --device 'mps'"),
    (dict(method="bnpp"), "unknown method 'bnpp'"),
    (dict(method="anp", method_args={"iteration": "3"}), "'iteration' is not a setting of anp"),
    (dict(normalize="cifar"), "bad --normalize 'cifar'"),
])
def test_every_bad_value_is_one_line(settings, problem):
    with pytest.raises(BdpruneError, match=problem) as info:
        ScanSettings(**{"device": "cpu", **settings}).resolve(has_data=True)
    assert "\n" not in str(info.value)


def test_arch_is_required_to_load_a_file_and_settings_pickle():
    with pytest.raises(BdpruneError, match="--arch is required"):
        ScanSettings().require_arch()
    settings = ScanSettings(arch="resnet18", method_args={"iterations": "5"})
    assert pickle.loads(pickle.dumps(settings)) == settings  # what a fleet sends to its workers


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's answer")
def test_cuda_on_a_machine_without_one():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BdpruneError, match="no CUDA GPU is available here"):
        resolve_device("cuda")
