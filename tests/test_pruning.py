"""prune: exactly the flagged channels change, everything else is bit-identical, metadata round-trips."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from bdprune.archs import build_model
from bdprune.checkpoint import file_sha256
from bdprune.cli import app
from bdprune.api import prune_checkpoint, scan_checkpoints
from _pipeline import read_pruned_channels

runner = CliRunner()


@pytest.mark.parametrize("method, params", [("bnp", ("weight",)), ("clp", ("weight", "bias"))])
def test_round_trip_changes_only_flagged_channels(tmp_path, bn_checkpoint, images_npz, method, params):
    kwargs = dict(arch_args=bn_checkpoint.arch_args, u=1.0, show_progress=False)
    data = images_npz if method == "bnp" else None
    [scan] = scan_checkpoints([bn_checkpoint.path], bn_checkpoint.arch, method=method, data=data, **kwargs).results
    flagged = scan.flagged_channels()
    assert flagged, "u=1 must flag something for the test to mean anything"
    out = prune_checkpoint(bn_checkpoint.path, bn_checkpoint.arch, method=method, data=data, output=tmp_path / "p.safetensors", **kwargs)
    before = torch.load(bn_checkpoint.path, weights_only=True)
    after = load_file(str(out.output))
    assert set(after) == set(before)
    for key, old in before.items():
        layer, _, param = key.rpartition(".")
        new = after[key]
        if layer in flagged and param in params:
            chans = flagged[layer]
            assert torch.all(new[chans] == 0)
            keep = torch.ones(len(old), dtype=torch.bool)
            keep[chans] = False
            assert torch.equal(new[keep], old[keep])
        else:
            assert torch.equal(new, old), key
    channels, meta = read_pruned_channels(out.output)
    assert channels == flagged
    assert meta["method"] == method and float(meta["u"]) == 1.0 and meta["pruned_params"] == ",".join(params)
    assert meta["source_sha256"] == file_sha256(bn_checkpoint.path)
    model, _ = build_model(bn_checkpoint.arch, after, arch_args=bn_checkpoint.arch_args)
    model.load_state_dict(after, strict=True)


def test_channels_report_gives_the_same_bytes(tmp_path, bn_checkpoint, images_npz):
    args = [str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(images_npz), "--u", "1.5"]
    report = tmp_path / "report.json"
    assert runner.invoke(app, ["scan", *args, "--format", "json", "-o", str(report), "--exit-zero"]).exit_code == 0
    assert json.loads(report.read_text())["flagged"]
    direct, listed = tmp_path / "direct.safetensors", tmp_path / "listed.safetensors"
    assert runner.invoke(app, ["prune", *args, "-o", str(direct)]).exit_code == 0
    r = runner.invoke(app, ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--channels", str(report), "-o", str(listed)])
    assert r.exit_code == 0, r.output
    assert direct.read_bytes() == listed.read_bytes()


def test_default_output_name_and_force(tmp_path, bn_checkpoint):
    args = ["prune", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--method", "clp"]
    assert runner.invoke(app, args).exit_code == 0
    default = bn_checkpoint.path.with_name("tiny.pruned.safetensors")
    assert default.exists()
    assert runner.invoke(app, args).exit_code == 2
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


def test_max_acc_drop_chooses_the_smallest_u_within_budget(tmp_path, bn_checkpoint, images_npz):
    out = prune_checkpoint(
        bn_checkpoint.path, bn_checkpoint.arch, arch_args=bn_checkpoint.arch_args, data=images_npz, val=images_npz,
        max_acc_drop=0.0, output=tmp_path / "t.safetensors", show_progress=False,
    )
    ok = [p.u for p in out.curve if out.base_acc - p.acc <= 0.0]
    assert out.u == (min(ok) if ok else None)
    assert [p.u for p in out.curve] == sorted((p.u for p in out.curve), reverse=True)


def test_unlearn_above_the_class_limit_takes_its_classes_from_the_scans_verdict(tmp_path, images_npz, monkeypatch):
    """With 150 classes the per-class probe cannot try every class: prune runs the scan's verdict and hands it to unlearn."""
    import bdprune.repair as repair
    from bdprune.repair import RepairSettings
    from bdprune.scoring import Verdict

    torch.manual_seed(0)
    model, _ = build_model("smallcnn", None, num_classes=150, arch_args={"width": "4"})
    path = tmp_path / "many.pt"
    torch.save(model.state_dict(), path)
    seen = []
    real = repair.verdict_triggers
    monkeypatch.setattr(repair, "verdict_triggers", lambda model, data, verdict, **k: seen.append(verdict) or real(model, data, verdict, **k))
    out = prune_checkpoint(path, "smallcnn", data=images_npz, arch_args={"width": "4"}, output=tmp_path / "p.safetensors", show_progress=False,
                           repair=RepairSettings("unlearn", epochs=1))
    [verdict] = seen
    assert isinstance(verdict, Verdict) and verdict.rule == "bnp-trigger"
    assert any("--repair unlearn found no trigger" in note for note in out.notes)


def test_a_fine_tune_on_too_few_samples_per_class_warns(tmp_path, clean_images):
    import numpy as np

    from bdprune.repair import RepairSettings

    torch.manual_seed(0)
    for classes, warned in ((4, False), (150, True)):  # 64 labelled samples: 16 per class, then 0.4
        data = tmp_path / f"d{classes}.npz"
        np.savez(data, images=clean_images.numpy(), labels=np.arange(len(clean_images)) % min(classes, 10))
        model, _ = build_model("smallcnn", None, num_classes=classes, arch_args={"width": "4"})
        path = tmp_path / f"m{classes}.pt"
        torch.save(model.state_dict(), path)
        out = prune_checkpoint(path, "smallcnn", data=data, arch_args={"width": "4"}, output=tmp_path / f"p{classes}.safetensors",
                               show_progress=False, repair=RepairSettings("finetune", epochs=1))
        notes = [n for n in out.notes if n.startswith("warning: --repair finetune fine-tunes on")]
        assert bool(notes) == warned, out.notes
        if warned:
            assert f"{len(clean_images)} clean samples for {classes} classes" in notes[0] and "pass at least 1500" in notes[0]
