"""bdprune.scan: the scan step (load, statistics, scores, flags, verdict) on a small model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from bdprune.checkpoint import Checkpoint
from bdprune.data import ImageSet
from bdprune.errors import BdpruneError
from bdprune.options import ScanSettings
from bdprune.scan import LoadedModel, load_model, load_samples, scan_loaded, score_model


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
