"""Tests for bdprune.checkpoint.load_checkpoint and bdprune.scan.load_model: every checkpoint form
we accept round-trips to identical tensors and says where its state_dict was found."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

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


# --- checkpoints as frameworks write them (issue 24) -------------------------------------------

def lightning_checkpoint(state: dict, attribute: str = "model") -> dict:
    """What ``Trainer.save_checkpoint`` writes for a LightningModule holding the net as
    ``self.<attribute>`` and a weighted loss as ``self.criterion``."""
    return {
        "epoch": 3,
        "global_step": 100,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict([*prefixed(state, f"{attribute}.").items(), ("criterion.weight", torch.ones(10))]),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_acc'}": {"best_model_score": torch.tensor(0.91), "best_model_path": "x.ckpt"}},
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 3, "_step_count": 4}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.1, "arch": "smallcnn", "widths": [8, 16]},
    }


@pytest.mark.parametrize("attribute", ["model", "net", "backbone", "model.model"])
def test_lightning_ckpt_loads_without_options(tmp_path, bn_checkpoint, attribute):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / "epoch=3-step=100.ckpt"
    torch.save(lightning_checkpoint(state, attribute), path)
    loaded = load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert_model_loaded(loaded, state)
    assert loaded.checkpoint.prefix == attribute + "."
    notes = loaded.checkpoint.notes
    assert f"stripping key prefix '{attribute}.'" in notes
    assert f"ignoring 1 entry outside '{attribute}.' that --arch smallcnn does not use: criterion.weight" in notes


def test_hugging_face_pytorch_model_bin_with_a_base_model_prefix(tmp_path, bn_checkpoint):
    state = bn_checkpoint.model.state_dict()
    path = tmp_path / "pytorch_model.bin"
    torch.save(prefixed(state, "model."), path)
    loaded = load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert_model_loaded(loaded, state)
    assert loaded.checkpoint.notes == ["stripping key prefix 'model.'"]


def write_sharded(folder: Path, state: dict, prefix: str = "") -> Path:
    """``state`` as Hugging Face's ``save_pretrained`` shards it: two safetensors shards and
    ``model.safetensors.index.json`` mapping each tensor to its shard."""
    import json

    keys = list(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    weight_map = {}
    for name, part in shards.items():
        save_file({prefix + k: state[k].contiguous() for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({prefix + k: name for k in part})
    index = folder / "model.safetensors.index.json"
    total = sum(t.numel() * t.element_size() for t in state.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("which", ["index", "folder"])
def test_sharded_safetensors_load_every_shard(tmp_path, bn_checkpoint, which):
    state = bn_checkpoint.model.state_dict()
    folder = tmp_path / "hf"
    folder.mkdir()
    index = write_sharded(folder, state, prefix="model.")
    loaded = load_model(index if which == "index" else folder, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert_model_loaded(loaded, state)
    assert set(loaded.checkpoint.model_state) == set(state)
    assert loaded.checkpoint.prefix == "model."


def test_sharded_checkpoint_hash_covers_every_shard(tmp_path, bn_checkpoint):
    from bdprune.checkpoint import file_sha256

    folder = tmp_path / "hf"
    folder.mkdir()
    index = write_sharded(folder, bn_checkpoint.model.state_dict())
    before = file_sha256(index)
    assert file_sha256(folder) == before
    shard = folder / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    shard.write_bytes(bytes(data))
    assert file_sha256(index) != before


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda doc, f: doc["weight_map"].update({"conv1.weight": "../elsewhere.safetensors"}), "not a file name beside it"),
        (lambda doc, f: doc["weight_map"].update({"conv1.weight": "model-00009-of-00009.safetensors"}), "shard model-00009-of-00009.safetensors it lists is missing"),
        (lambda doc, f: doc["weight_map"].update({"ghost.weight": "model-00001-of-00002.safetensors"}), "lists 1 tensor(s) its shards do not hold"),
        (lambda doc, f: doc.pop("weight_map"), "no \"weight_map\""),
    ],
    ids=["path-escape", "missing-shard", "absent-tensor", "no-weight-map"],
)
def test_a_broken_shard_index_is_one_error_naming_it(tmp_path, bn_checkpoint, edit, problem):
    import json

    folder = tmp_path / "hf"
    folder.mkdir()
    index = write_sharded(folder, bn_checkpoint.model.state_dict())
    doc = json.loads(index.read_text())
    edit(doc, folder)
    index.write_text(json.dumps(doc))
    with pytest.raises(BdpruneError) as err:
        load_checkpoint(folder)
    assert str(err.value).startswith(str(index)) and problem in str(err.value)


def test_a_folder_without_a_shard_index_is_still_refused(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(BdpruneError, match="is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path / "run")


def test_timm_train_script_checkpoint_prefers_state_dict(tmp_path, bn_checkpoint):
    """timm's train.py saves the model, its EMA copy and the argparse arguments."""
    import argparse

    state = bn_checkpoint.model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "checkpoint-7.pth.tar"
    args = argparse.Namespace(model="smallcnn", lr=0.05, epochs=300, model_ema=True)
    torch.save({"epoch": 7, "arch": "smallcnn", "state_dict": state, "state_dict_ema": ema, "optimizer": {"state": {}, "param_groups": []},
                "version": 2, "args": args, "metric": 71.3}, path)
    allowed = set(torch.serialization.get_safe_globals())
    loaded = load_model(path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args)
    assert_model_loaded(loaded, state)
    assert loaded.checkpoint.notes == ["using the state_dict under key 'state_dict'", "'state_dict_ema' was not used"]
    assert set(torch.serialization.get_safe_globals()) == allowed  # the allowance was for that one load


def test_code_inside_saved_arguments_still_never_runs(tmp_path):
    import argparse
    import builtins

    class OpensFile:
        def __reduce__(self):
            return (builtins.open, (str(tmp_path / "PWNED"), "w"))

    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(hook=OpensFile())}, path)
    with pytest.raises(BdpruneError, match="--trust-pickle"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_timm_plain_state_dict_of_a_real_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10).eval()
    path = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": model.state_dict(), "epoch": 1}, path)
    loaded = load_model(path, "timm:mobilenetv3_small_100")
    assert_model_loaded(loaded, model.state_dict())
    assert "'state_dict_ema' was not used" in loaded.checkpoint.notes
    assert loaded.spec.input_shape == tuple(model.pretrained_cfg["input_size"])


def test_torchvision_plain_state_dict_of_a_real_torchvision_model(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    assert_model_loaded(load_model(path, "torchvision:resnet18"), model.state_dict())
