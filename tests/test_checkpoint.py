"""Tests for bdprune.checkpoint.load_checkpoint and bdprune.scan.load_model: every checkpoint form
we accept round-trips to identical tensors and says where its state_dict was found."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from bdprune.archs.smallcnn import smallcnn
from bdprune.checkpoint import load_checkpoint
from bdprune.errors import BdpruneError
from bdprune.scan import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prefixed(state: dict, prefix: str) -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in state.items())


def assert_same_tensors(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
        assert got[key].dtype == value.dtype


def assert_model_loaded(loaded, state: dict) -> None:
    assert_same_tensors(loaded.model.state_dict(), state)
    assert not loaded.model.training


def load_both(path, saved):
    ckpt = load_checkpoint(path)
    loaded = load_model(path, saved.arch, arch_args=saved.arch_args)
    return ckpt, loaded


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_plain_state_dict(tmp_path, bn_checkpoint, suffix):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / f"model{suffix}"
    torch.save(state, path)
    ckpt, loaded = load_both(path, bn_checkpoint)
    assert ckpt.wrapper_key is None and ckpt.prefix == "" and ckpt.notes == []
    assert_same_tensors(ckpt.tensors, state)
    assert_same_tensors(ckpt.model_state, state)
    assert_model_loaded(loaded, state)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "net"])
def test_wrapped_under_a_known_key(tmp_path, bn_checkpoint, key):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"epoch": 7, "best_acc": 91.5, key: state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, path)
    ckpt, loaded = load_both(path, bn_checkpoint)
    assert ckpt.wrapper_key == key
    assert any(repr(key) in note for note in ckpt.notes), ckpt.notes
    assert_same_tensors(ckpt.model_state, state)
    assert_model_loaded(loaded, state)
    assert loaded.checkpoint.wrapper_key == key


def test_single_nested_tensor_dict_under_any_key(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / "ema.pt"
    torch.save({"ema_weights": state, "step": 1000, "config": {"lr": 0.1, "name": "run"}}, path)
    ckpt, loaded = load_both(path, bn_checkpoint)
    assert ckpt.wrapper_key == "ema_weights"
    assert any("'ema_weights'" in note for note in ckpt.notes)
    assert_same_tensors(ckpt.model_state, state)
    assert_model_loaded(loaded, state)


def test_the_papers_output_with_a_trigger_tensor(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / "backdoored.pth"
    torch.save({"state_dict": state, "trigger": torch.rand(3, 3, 3)}, path)
    ckpt, loaded = load_both(path, bn_checkpoint)
    assert ckpt.wrapper_key == "state_dict"
    assert "trigger" not in ckpt.tensors
    assert_same_tensors(ckpt.model_state, state)
    assert_model_loaded(loaded, state)


def test_several_nested_tensor_dicts_are_ambiguous(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / "two.pt"
    torch.save({"student": state, "teacher": state, "epoch": 1}, path)
    with pytest.raises(BdpruneError, match="several tensor dicts"):
        load_checkpoint(path)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
@pytest.mark.parametrize("wrapped", [False, True])
def test_parallel_and_compile_prefixes_are_stripped(tmp_path, bn_checkpoint, prefix, wrapped):
    state = bn_checkpoint.model.state_dict()
    file_state = prefixed(state, prefix)
    path = tmp_path / "prefixed.pt"
    torch.save({"state_dict": file_state} if wrapped else file_state, path)
    ckpt, loaded = load_both(path, bn_checkpoint)
    assert ckpt.prefix == prefix
    assert any(repr(prefix) in note for note in ckpt.notes), ckpt.notes
    assert ckpt.wrapper_key == ("state_dict" if wrapped else None)
    assert_same_tensors(ckpt.tensors, file_state)  # the file's own names are kept
    assert_same_tensors(ckpt.model_state, state)
    assert ckpt.file_key("bn1.weight") == prefix + "bn1.weight"
    assert_model_loaded(loaded, state)


def test_a_prefix_on_only_some_keys_is_not_stripped(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    mixed = OrderedDict((("module." + k) if k.startswith("bn") else k, v) for k, v in state.items())
    path = tmp_path / "mixed.pt"
    torch.save(mixed, path)
    assert load_checkpoint(path).prefix == ""
    with pytest.raises(BdpruneError, match="does not fit"):
        load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)


@pytest.mark.parametrize("name", ["model.safetensors", "weights.bin"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_safetensors_by_suffix_or_by_content(tmp_path, bn_checkpoint, name, prefix):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in prefixed(state, prefix).items()}, str(path))
    ckpt, loaded = load_both(path, bn_checkpoint)
    assert ckpt.prefix == prefix and ckpt.wrapper_key is None
    assert set(ckpt.model_state) == set(state)  # safetensors stores keys sorted
    for key, value in state.items():
        assert torch.equal(ckpt.model_state[key], value) and ckpt.model_state[key].dtype == value.dtype
    assert_model_loaded(loaded, state)


def test_missing_num_batches_tracked_is_tolerated(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    trimmed = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert len(trimmed) < len(state)
    path = tmp_path / "trimmed.pt"
    torch.save(trimmed, path)
    loaded = load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    for key, value in trimmed.items():
        assert torch.equal(loaded.model.state_dict()[key], value)


# --- mismatches -----------------------------------------------------------------------------

def error_of(path, arch, **kwargs) -> str:
    with pytest.raises(BdpruneError) as info:
        load_model(path, arch, **kwargs)
    return str(info.value)


def test_missing_and_unexpected_keys_are_listed_with_an_arch_hint(tmp_path, bn_checkpoint):
    state = OrderedDict(bn_checkpoint.model.state_dict())
    del state["bn3.running_var"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    message = error_of(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert str(path) in message
    assert "1 missing: bn3.running_var" in message
    assert "1 unexpected: extra.weight" in message
    assert "--arch" in message


def test_wrong_width_lists_the_misshaped_keys_and_suggests_arch(bn_checkpoint):
    # smallcnn does not infer its width: a width-8 checkpoint does not fit the default width 32
    message = error_of(bn_checkpoint.path, "smallcnn")
    assert "mis-shaped" in message
    assert "conv1.weight (8, 1, 3, 3) vs (32, 1, 3, 3)" in message
    assert "more" in message  # many keys differ: the first three are shown and the rest counted
    assert "--arch" in message and "--arch-arg" in message


def test_wrong_classifier_size_suggests_num_classes(bn_checkpoint):
    message = error_of(bn_checkpoint.path, bn_checkpoint.arch, num_classes=5, arch_args=bn_checkpoint.arch_args)
    assert "fc2.weight (10, 32) vs (5, 32)" in message and "fc2.bias" in message
    assert "--num-classes" in message


def test_a_different_architecture_lists_keys_and_suggests_arch(bn_checkpoint):
    message = error_of(bn_checkpoint.path, "resnet18")
    assert "does not fit --arch resnet18" in message
    assert "missing" in message and "unexpected" in message
    assert "layer1.0.conv1.weight" in message or "layer1.0.bn1.weight" in message
    assert "bdprune archs" in message


def test_num_classes_is_inferred_from_the_checkpoint(tmp_path):
    model = smallcnn(num_classes=7, in_channels=1, width=8)
    path = tmp_path / "seven.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, "smallcnn", arch_args={"width": "8"})
    assert loaded.num_classes == 7 and loaded.in_channels == 1
