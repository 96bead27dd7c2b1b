"""bdprune.prune: masks on the file's own tensors and on a model agree, the safetensors bytes are
deterministic and readable, and bad channel lists are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load

from bdprune.checkpoint import Checkpoint
from bdprune.errors import BdpruneError
from bdprune.prune import check_channels, mask_model, masked_tensors, pruning_metadata, safetensors_bytes


def checkpoint_of(model, prefix=""):
    return Checkpoint(path=__file__, tensors={prefix + k: v.clone() for k, v in model.state_dict().items()}, prefix=prefix)


def test_masked_tensors_and_mask_model_agree_and_keep_file_keys(bn_model):
    channels = {"bn1": [0, 3], "bn4": [1]}
    fill = {"bn1": [0.5 * i for i in range(8)]}
    tensors = masked_tensors(checkpoint_of(bn_model, "module."), channels, ("weight", "bias"), fill)
    mask_model(bn_model, channels, ("weight", "bias"), fill)
    state = bn_model.state_dict()
    assert set(tensors) == {"module." + k for k in state}
    for key, value in state.items():
        assert torch.equal(tensors["module." + key], value), key
    assert tensors["module.bn1.weight"][[0, 3]].tolist() == [0.0, 0.0] and tensors["module.bn1.bias"][[0, 3]].tolist() == [0.0, 1.5]
    assert tensors["module.bn4.bias"][1] == 0.0  # no fill for bn4: zeroed


def test_safetensors_bytes_are_deterministic_and_round_trip(bn_model):
    tensors = {k: v.clone() for k, v in bn_model.state_dict().items()}
    meta = {"b": "2", "a": "1"}
    blob = safetensors_bytes(tensors, meta)
    assert blob == safetensors_bytes(dict(reversed(list(tensors.items()))), dict(reversed(list(meta.items()))))
    back = load(blob)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_metadata_records_what_was_done(tmp_path, bn_model):
    source = tmp_path / "m.pt"
    source.write_bytes(b"checkpoint")
    meta = pruning_metadata(method="bnp", u=3.0, samples=500, source=source, channels={"bn2": [4, 1], "bn3": []},
                            params=("weight",), extra={"k": "2"})
    assert meta["method"] == "bnp" and meta["u"] == "3.0" and meta["samples"] == "500" and meta["k"] == "2"
    assert json.loads(meta["pruned_channels"]) == {"bn2": [1, 4]} and meta["pruned_params"] == "weight"
    assert meta["source_sha256"] == __import__("hashlib").sha256(b"checkpoint").hexdigest()
    path = tmp_path / "o.safetensors"
    path.write_bytes(safetensors_bytes(dict(bn_model.state_dict()), meta))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == meta


@pytest.mark.parametrize(("channels", "problem"), [
    ({"conv1": [0]}, "'conv1' is not a BatchNorm layer"),
    ({"bn1": [8]}, "bn1 has 8 channels; indices \\[8\\] are out of range"),
    ({"bn1": [True]}, "out of range"),
])
def test_bad_channel_lists(bn_model, channels, problem):
    with pytest.raises(BdpruneError, match=problem):
        check_channels(bn_model, channels, ("weight",), source="r.json")
    with pytest.raises(BdpruneError, match="8 channels but 3 fill values"):
        check_channels(bn_model, {"bn1": [0]}, ("weight", "bias"), fill={"bn1": [0.0, 0.0, 0.0]})
