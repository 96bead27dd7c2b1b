"""Repair after pruning: BN re-estimation against statistics computed directly, fine-tuning that
keeps pruned channels pruned, and the CLI path (metadata, refusals)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from _images import make_images
from safetensors import safe_open
from typer.testing import CliRunner

from bdprune.cli import app
from bdprune.data import ImageSet
from bdprune.prune import mask_model
from bdprune.repair import RepairSettings, reestimate_bn, repair_model
from bdprune.stats import bn_layers

CPU = torch.device("cpu")


def test_bn_reestimation_equals_the_cumulative_statistics_of_the_data(bn_model):
    images = make_images(40, seed=4)
    model = copy.deepcopy(bn_model)
    inputs = {}
    hooks = [bn.register_forward_pre_hook(lambda m, a, name=name: inputs.setdefault(name, []).append(a[0].detach()))
             for name, bn in bn_layers(model)]
    reestimate_bn(model, images, batch_size=16)  # batches of 16, 16, 8
    for h in hooks:
        h.remove()
    for name, bn in bn_layers(model):
        batches = inputs[name]
        dims = [0] + list(range(2, batches[0].dim()))
        # torch's cumulative average (momentum None) of per-batch mean and unbiased variance
        means = torch.stack([b.mean(dims) for b in batches])
        vars_ = torch.stack([b.var(dims, unbiased=True) for b in batches])
        torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, vars_.mean(0), rtol=1e-5, atol=1e-6)
        assert bn.momentum == bn_model.get_submodule(name).momentum
    assert not model.training
    for (name, a), (_, b) in zip(bn_layers(model), bn_layers(bn_model)):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_finetune_changes_weights_but_keeps_pruned_channels_pruned(bn_model):
    model = copy.deepcopy(bn_model)
    layer = bn_layers(model)[0][0]
    channels = {layer: [0, 2]}
    mask_model(model, channels, ("weight", "bias"))
    data = ImageSet(make_images(32, seed=5), torch.arange(32) % 10, "clean.npz")
    repaired = repair_model(model, channels, ("weight", "bias"), None, data, RepairSettings("finetune", epochs=2), device=CPU)
    bn = repaired.get_submodule(layer)
    assert torch.all(bn.weight[[0, 2]] == 0) and torch.all(bn.bias[[0, 2]] == 0)
    assert not torch.equal(bn.weight[1], model.get_submodule(layer).weight[1])  # the rest was trained
    before, after = model.get_submodule(layer).weight, bn_model.get_submodule(layer).weight
    assert torch.equal(before[1:2], after[1:2]) and torch.equal(before[3:], after[3:])  # repair left its input alone


def test_cli_prune_with_repair_records_it_and_keeps_channels_zero(tmp_path, bn_checkpoint, images_npz):
    out = tmp_path / "pruned.safetensors"
    result = CliRunner().invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz),
                                      "--u", "1", "--repair", "finetune", "--repair-epochs", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        pruned = json.loads(meta["pruned_channels"])
        assert meta["repair"] == "finetune" and meta["repair_epochs"] == "2" and meta["repair_samples"] == "64"
        assert meta["repair_refit_bn"] == "yes"
        assert pruned
        for layer, chans in pruned.items():
            assert torch.all(f.get_tensor(f"{layer}.weight")[chans] == 0)
        original = bn_checkpoint.model.state_dict()
        assert any(not torch.equal(f.get_tensor(k), original[k]) for k in f.keys() if k in original and
                   original[k].dtype.is_floating_point and k not in {f"{l}.weight" for l in pruned})
    assert "repaired" in result.output


def test_cli_repair_refuses_unlabelled_data_and_ep_without_val(tmp_path, bn_checkpoint, clean_images):
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, images=clean_images.numpy())
    runner = CliRunner()
    for extra in (["--data", str(unlabelled)], ["--method", "ep", "--data", str(unlabelled)]):
        out = tmp_path / "never.safetensors"
        result = runner.invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, *extra,
                                     "--repair", "bn", "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert "labelled clean samples" in result.output and not out.exists()
    result = runner.invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--repair", "nope"])
    assert result.exit_code == 2 and "unknown --repair" in result.output


def test_unlearn_batches_are_the_clean_batch_plus_the_same_images_carrying_one_trigger(bn_model, monkeypatch):
    """Each step trains on n clean images and the same n images with one of the synthesized
    triggers added in pixel space, clipped to [0, 1] and then normalized, all with true labels."""
    import bdprune.repair as repair

    seen = []
    real = repair.cross_entropy

    def recording(net, images, labels):
        seen.append((images.detach().clone(), labels.clone()))
        return real(net, images, labels)

    monkeypatch.setattr(repair, "cross_entropy", recording)
    raw = make_images(20, seed=6)
    data = ImageSet(raw, torch.arange(20) % 10, "clean.npz")
    triggers = [torch.full(raw.shape[1:], 0.5), -torch.ones(raw.shape[1:])]
    mean, std = (0.5,), (0.25,)
    repair_model(bn_model, {}, ("weight",), None, data, RepairSettings("unlearn", epochs=2, batch_size=8), device=CPU,
                 normalize=(mean, std), triggers=triggers)
    norm = lambda x: (x - 0.5) / 0.25  # noqa: E731
    assert len(seen) == 2 * 3  # 20 samples in batches of 8, 8, 4
    used = set()
    for images, labels in seen:
        n = len(images) // 2
        clean, stamped = images[:n], images[n:]
        assert torch.equal(labels[:n], labels[n:])
        rows = [int(torch.nonzero((norm(raw) - c).abs().amax((1, 2, 3)) < 1e-6)[0]) for c in clean]
        assert torch.equal(labels[:n], data.labels[rows])  # true labels, not a target
        matches = [i for i, t in enumerate(triggers) if torch.allclose(stamped, norm((raw[rows] + t).clamp(0, 1)), atol=1e-6)]
        assert len(matches) == 1
        used |= set(matches)
    assert used == {0, 1}  # both triggers drawn over the six steps


def test_finetune_and_unlearn_refit_the_bn_statistics_on_the_clean_images_alone(bn_model):
    """After training, the running statistics are the cumulative ones of the clean training images
    under the trained weights (not those of the trigger-carrying copies); nothing else changes."""
    raw = make_images(24, seed=8)
    data = ImageSet(raw, torch.arange(24) % 10, "clean.npz")
    triggers = [torch.full(raw.shape[1:], 0.5)]
    for mode in ("finetune", "unlearn"):
        runs = [repair_model(bn_model, {}, ("weight",), None, data, RepairSettings(mode, epochs=2, batch_size=8, refit_bn=refit),
                             device=CPU, triggers=triggers) for refit in (False, True)]
        kept, refit = runs
        want = copy.deepcopy(kept)
        reestimate_bn(want, raw, batch_size=8)
        for (key, x), (_, y) in zip(refit.state_dict().items(), want.state_dict().items()):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=key)
        assert any(not torch.allclose(a.running_mean, b.running_mean) for (_, a), (_, b) in zip(bn_layers(kept), bn_layers(refit)))


def test_cli_no_repair_refit_bn_keeps_the_statistics_training_left(tmp_path, bn_checkpoint, images_npz):
    out = tmp_path / "kept.safetensors"
    result = CliRunner().invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), "--u", "1",
                                      "--repair", "finetune", "--repair-epochs", "1", "--no-repair-refit-bn", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["repair_refit_bn"] == "no"


def test_unlearn_without_triggers_is_exactly_finetune(bn_model):
    data = ImageSet(make_images(24, seed=7), torch.arange(24) % 10, "clean.npz")
    a = repair_model(bn_model, {}, ("weight",), None, data, RepairSettings("unlearn", epochs=2), device=CPU)
    b = repair_model(bn_model, {}, ("weight",), None, data, RepairSettings("finetune", epochs=2), device=CPU)
    for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), key


def _fake_probe(monkeypatch, candidates, explained):
    """Make find_triggers see a probe with ``candidates`` whose best usable one explains ``explained``
    (None: no candidate singles out a class); class_triggers returns the class's perturbations."""
    import bdprune.repair as repair
    from bdprune.class_probe import ProbeResult, SuspectTrigger

    probe = ProbeResult([0.0] * 10, 0, 0.0, "", 8, 0.0, None, candidates)
    usable = [c for c in candidates if c[2] >= 0.1]
    best = max(usable, key=lambda c: c[2]) if usable else None
    suspect = None if explained is None else SuspectTrigger(best[1], best[0], best[2], explained)
    monkeypatch.setattr(repair, "suspect_trigger", lambda *a, **k: (probe, suspect))
    monkeypatch.setattr(repair, "class_triggers", lambda model, images, probe, cls, **k: [c[3] for c in probe.candidates if c[1] == cls])


def test_find_triggers_unlearns_the_class_the_verdict_suspects(monkeypatch):
    from bdprune.repair import find_triggers

    d = torch.zeros(1, 2, 2)
    _fake_probe(monkeypatch, [("l2=0.1", 3, 0.3, d), ("l1=0.01", 5, 0.2, d), ("l1=0.02", 5, 0.2, d)], explained=0.2)
    found, note = find_triggers(None, ImageSet(torch.zeros(2, 1, 2, 2), None, "x.npz"), device=CPU)
    # explained 0.2 >= the verdict's bar 0.15: its class 3, although class 5 persists more (0.4 vs 0.3)
    assert found.target == 3 and found.explained == 0.2 and found.persistence == pytest.approx(0.3)
    assert found.metadata() == {"unlearned_class": "3", "unlearned_persistence": "0.3000", "unlearned_explained": "0.2000"}
    assert "class 3" in note and "explains 0.200" in note


def test_find_triggers_unlearns_a_persistent_class_below_the_explained_bar(monkeypatch):
    from bdprune.repair import PERSISTENCE_BAR, find_triggers

    d = torch.zeros(1, 2, 2)
    leads = [("l2=0.05", 4, 0.4, d), ("l2=0.1", 4, 0.3, d), ("l1=0.01", 4, 0.3, d), ("l1=0.02", 7, 0.5, d)]
    _fake_probe(monkeypatch, leads, explained=0.05)
    found, note = find_triggers(None, ImageSet(torch.zeros(2, 1, 2, 2), None, "x.npz"), device=CPU)
    assert PERSISTENCE_BAR == 1.0 and found.target == 4 and found.explained is None
    assert found.persistence == pytest.approx(1.0) and len(found.perturbations) == 3
    assert "unlearned_explained" not in found.metadata() and "persistence 1.00" in note
    # just below the bar on both counts: nothing is unlearned
    _fake_probe(monkeypatch, leads[1:], explained=0.149)
    found, note = find_triggers(None, ImageSet(torch.zeros(2, 1, 2, 2), None, "x.npz"), device=CPU)
    assert found is None and "found no trigger" in note and "persistence 0.60" in note
    _fake_probe(monkeypatch, [("l2=0.05", 4, 0.05, d)], explained=None)
    found, note = find_triggers(None, ImageSet(torch.zeros(2, 1, 2, 2), None, "x.npz"), device=CPU)
    assert found is None and "no candidate singles out a class" in note


def test_find_triggers_unlearns_every_class_that_persists(monkeypatch):
    """Two triggers for two targets: the chosen class, and every other class whose persistence reaches the bar."""
    from bdprune.repair import PERSISTENCE_BAR, find_triggers

    d = torch.zeros(1, 2, 2)
    leads = [("l2=0.05", 4, 0.6, d), ("l2=0.1", 4, 0.6, d), ("l1=0.01", 7, 0.5, d), ("l1=0.02", 7, 0.5, d), ("l1=0.04", 2, 0.9, d)]
    _fake_probe(monkeypatch, leads, explained=0.3)
    found, note = find_triggers(None, ImageSet(torch.zeros(2, 1, 2, 2), None, "x.npz"), device=CPU)
    # class 2's trigger (the best lead) explains 0.3: the first gate; then class 4 (1.2) and 7 (exactly the bar) persist
    assert PERSISTENCE_BAR == 1.0 and (found.target, found.more) == (2, [4, 7]) and len(found.perturbations) == 5
    assert found.metadata()["unlearned_class"] == "2,4,7" and "also class 4, 7 (persistence 1.20, 1.00)" in note
    _fake_probe(monkeypatch, leads[:3] + leads[4:], explained=0.3)  # class 7 at 0.5: below the bar, left alone
    found, _ = find_triggers(None, ImageSet(torch.zeros(2, 1, 2, 2), None, "x.npz"), device=CPU)
    assert (found.target, found.more) == (2, [4])


def test_above_the_class_limit_unlearn_takes_every_target_the_verdict_names(monkeypatch):
    """150 classes: the per-class probe cannot try them all; it runs on each of the verdict's targets alone."""
    import bdprune.repair as repair
    from bdprune.archs import build_model
    from bdprune.class_probe import ProbeResult
    from bdprune.scoring import Verdict

    torch.manual_seed(0)
    model, _ = build_model("smallcnn", None, num_classes=150, arch_args={"width": "4"})
    model.eval()
    data = ImageSet(torch.rand((40, 1, 8, 8), generator=torch.Generator().manual_seed(1)), None, "x.npz")
    flagged = Verdict(True, 0.9, 0.7, "bnp-trigger", target=120, targets=[120, 31])
    # an untrained model: no perturbation reaches either class, so nothing is unlearned, and the note says why
    found, note = repair.find_triggers(model, data, device=CPU, verdict=flagged)
    assert found is None and "reaches none of the verdict's targets [120, 31]" in note
    for verdict in (None, Verdict(False, 0.2, 0.7, "bnp-trigger")):  # nothing named: a plain fine-tune, and it says so
        found, note = repair.find_triggers(model, data, device=CPU, verdict=verdict)
        assert found is None and "the verdict names no target" in note

    asked = []
    d = torch.zeros(1, 8, 8)

    def probe(model, images, *, only=None, **kwargs):
        if only is None:
            return None  # too many classes, as the real probe answers
        asked.append(list(only))
        (cls,) = only
        return ProbeResult([0.0] * 150, cls, 0.5, "l2=0.1", 32, 0.0, d, [("l2=0.1", cls, 0.5, d), ("l1=0.02", cls, 0.3, d)])

    monkeypatch.setattr(repair, "class_probe", probe)
    monkeypatch.setattr(repair, "suspect_trigger", lambda model, images, **k: None)
    found, note = repair.find_triggers(model, data, device=CPU, verdict=flagged)
    assert asked == [[120], [31]] and (found.target, found.more) == (120, [31]) and len(found.perturbations) == 4
    assert found.persistence == pytest.approx(0.8) and found.metadata()["unlearned_class"] == "120,31"
    assert "class 120, 31, named by the verdict's trigger probe" in note


def test_distillation_adds_the_kl_divergence_to_the_teacher_on_the_clean_half():
    from bdprune.repair import _distilled

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    images, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    soft = torch.softmax(torch.randn(3, 3), 1)  # the teacher's probabilities for the first three (clean) images
    loss = _distilled(net, images, labels, soft, 0.5)
    with torch.no_grad():
        logits = net(images)
    p = torch.log_softmax(logits[:3], 1)
    kl = sum(float((soft[i] * (soft[i].log() - p[i])).sum()) for i in range(3)) / 3
    ce = float(torch.nn.functional.cross_entropy(logits, labels))
    assert loss.item() == pytest.approx(ce + 0.5 * kl, rel=1e-5)


def test_distilling_from_the_model_itself_changes_the_fine_tune_and_is_recorded(tmp_path, bn_checkpoint, images_npz):
    out = tmp_path / "pruned.safetensors"
    result = CliRunner().invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz),
                                      "--u", "1", "--repair", "finetune", "--repair-epochs", "2", "--repair-distill", "1",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    plain = tmp_path / "plain.safetensors"
    CliRunner().invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz),
                             "--u", "1", "--repair", "finetune", "--repair-epochs", "2", "-o", str(plain)])
    with safe_open(str(out), framework="pt") as f, safe_open(str(plain), framework="pt") as g:
        assert f.metadata()["repair_distill"] == "1" and "repair_distill" not in g.metadata()
        assert any(not torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())
    bad = CliRunner().invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz),
                                   "--repair", "unlearn", "--repair-distill", "-1", "-o", str(tmp_path / "no.safetensors")])
    assert bad.exit_code == 2 and "--repair-distill" in bad.output and not (tmp_path / "no.safetensors").exists()
