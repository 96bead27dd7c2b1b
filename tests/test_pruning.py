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
