"""Held-back early stopping of --repair finetune / unlearn (bdprune.repair_stop): the split, the
stopping rule against hand-made models, and the pipeline leaving a clean model untouched."""

from __future__ import annotations

import copy

import torch
from _images import make_images
from torch import nn

from bdprune.data import ImageSet
from bdprune.repair import RepairSettings, repair_model
from bdprune.repair_stop import ACC_SLACK, TRIGGER_FLIP_BAR, HeldBack, split_held_back

CPU = torch.device("cpu")


class Brightness(nn.Module):
    """Class 1 when the mean pixel exceeds ``cut``, else class 0."""

    def __init__(self, cut: float):
        super().__init__()
        self.cut = cut

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([self.cut - m, m - self.cut], 1)


def test_the_split_is_disjoint_seeded_and_of_the_asked_share():
    data = ImageSet(make_images(50), torch.arange(50) % 10, "clean.npz")
    train, held = split_held_back(data, 0.2, seed=3)
    assert len(train) == 40 and len(held) == 10
    rows = {tuple(x.flatten().tolist()) for x in train.images} | {tuple(x.flatten().tolist()) for x in held.images}
    assert len(rows) == 50
    again = split_held_back(data, 0.2, seed=3)[1]
    assert torch.equal(again.images, held.images) and not torch.equal(split_held_back(data, 0.2, seed=4)[1].images, held.images)


def test_it_stops_only_when_the_trigger_no_longer_moves_predictions_and_accuracy_is_back():
    images = torch.full((20, 1, 4, 4), 0.2)
    images[10:] = 0.8
    labels = (torch.arange(20) >= 10).long()
    model = Brightness(0.5)  # 100% right on these
    held = HeldBack(ImageSet(images, labels, "x"), target_acc=100.0)
    assert held.done(model, [], device=CPU)[0]
    # +0.4 brightness moves the ten dark images to class 1: half the predictions move
    done, why = held.done(model, [torch.full((1, 4, 4), 0.4)], device=CPU)
    assert not done and "50%" in why
    # a trigger moving one image in ten (10% <= the bar) is "no longer working"
    few = images.clone()
    few[0] = 0.45
    held_few = HeldBack(ImageSet(few, labels, "x"), target_acc=100.0)
    assert TRIGGER_FLIP_BAR == 0.10 and held_few.done(model, [torch.full((1, 4, 4), 0.1)], device=CPU)[0]
    # accuracy 50 points short of the model before pruning: not recovered
    assert not HeldBack(ImageSet(images, labels, "x"), target_acc=100.0).done(Brightness(0.9), [], device=CPU)[0]
    # within ACC_SLACK points counts as recovered
    assert HeldBack(ImageSet(images, labels, "x"), target_acc=100.0 + ACC_SLACK).done(model, [], device=CPU)[0]


def test_a_model_already_recovered_is_not_trained(bn_model):
    data = ImageSet(make_images(40, seed=5), torch.arange(40) % 10, "clean.npz")
    train, held = split_held_back(data, 0.25, seed=0)
    target = HeldBack(held, target_acc=0.0)  # nothing to recover, no trigger: stop before the first epoch
    notes: list[str] = []
    out = repair_model(bn_model, {}, ("weight",), None, train, RepairSettings("finetune", epochs=3), device=CPU,
                       held_back=target, notes=notes)
    for a, b in zip(out.state_dict().values(), bn_model.state_dict().values()):
        assert torch.equal(a, b)
    assert notes and notes[0].startswith("--repair finetune stopped after 0 of 3 epochs")


def test_an_unreachable_target_runs_every_epoch_like_a_fixed_schedule(bn_model):
    data = ImageSet(make_images(40, seed=5), torch.arange(40) % 10, "clean.npz")
    train, held = split_held_back(data, 0.25, seed=0)
    notes: list[str] = []
    stopped = repair_model(bn_model, {}, ("weight",), None, train, RepairSettings("finetune", epochs=2), device=CPU,
                           held_back=HeldBack(held, target_acc=200.0), notes=notes)
    fixed = repair_model(copy.deepcopy(bn_model), {}, ("weight",), None, train, RepairSettings("finetune", epochs=2), device=CPU)
    for a, b in zip(stopped.state_dict().values(), fixed.state_dict().values()):
        assert torch.equal(a, b)
    assert notes[0].startswith("--repair finetune ran 2 of 2 epochs")


def test_the_cli_records_the_held_back_share_and_says_when_it_stopped(tmp_path, bn_checkpoint, images_npz):
    import json

    from safetensors import safe_open
    from typer.testing import CliRunner

    from bdprune.cli import app

    out = tmp_path / "pruned.safetensors"
    result = CliRunner().invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz),
                                      "--u", "1", "--repair", "finetune", "--repair-epochs", "2", "--repair-holdout", "0.25",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "--repair finetune stopped after" in result.output or "--repair finetune ran 2 of 2" in result.output
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert meta["repair_holdout"] == "0.25"
        for layer, chans in json.loads(meta["pruned_channels"]).items():
            assert torch.all(f.get_tensor(f"{layer}.weight")[chans] == 0)
    bad = CliRunner().invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz),
                                   "--repair", "finetune", "--repair-holdout", "1", "-o", str(tmp_path / "no.safetensors")])
    assert bad.exit_code == 2 and "--repair-holdout" in bad.output
