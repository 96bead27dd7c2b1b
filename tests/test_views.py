"""Tests for bdprune.views: ``eval A --compare B`` reads before (A) and after (B), and
its delta is after - before, so a drop is negative."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from rich.console import Console
from typer.testing import CliRunner

from bdprune.cli import app
from bdprune.evaluate import EvalResult
from bdprune.views import print_eval

BEFORE = EvalResult("model.pt", acc=99.2, n_clean=1000, asr=100.0, n_triggered=900, target=0, trigger="patch:size=3,pos=br")
AFTER = EvalResult("model.pruned.safetensors", acc=98.0, n_clean=1000, asr=3.4, n_triggered=900, target=0, trigger="patch:size=3,pos=br")


def render(results, output_format: str) -> str:
    out = io.StringIO()
    print_eval(results, output_format, Console(file=out, width=200, color_system=None))
    return out.getvalue()


def test_the_delta_row_is_after_minus_before():
    text = render([BEFORE, AFTER], "table")
    [row] = [line for line in text.splitlines() if "delta" in line]
    assert "delta (after - before)" in row
    assert "-1.20" in row and "-96.60" in row  # a drop reads negative


def test_the_json_delta_is_compare_minus_checkpoint():
    doc = json.loads(render([BEFORE, AFTER], "json"))
    delta = doc["delta"]
    assert delta["before"] == "model.pt" and delta["after"] == "model.pruned.safetensors"
    assert abs(delta["acc"] - (98.0 - 99.2)) < 1e-9 and abs(delta["asr"] - (3.4 - 100.0)) < 1e-9
    assert "delta" not in json.loads(render([BEFORE], "json"))


def test_cli_eval_compare_reports_the_compared_checkpoint_minus_the_first(tmp_path, bn_checkpoint, make_bn_model):
    worse = make_bn_model(seed=0)
    with torch.no_grad():
        worse.fc2.weight.mul_(-1)  # flips most predictions
    torch.save(worse.state_dict(), tmp_path / "worse.pt")
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((64, 1, 8, 8), dtype=np.float32))
    with torch.no_grad():
        labels = bn_checkpoint.model(images).argmax(1).numpy()  # the first checkpoint is 100% right
    np.savez(tmp_path / "test.npz", images=images.numpy(), labels=labels)
    args = ["eval", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--data", str(tmp_path / "test.npz"), "--device", "cpu",
            "--compare", str(tmp_path / "worse.pt")]
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    first, second = doc["results"]
    assert first["acc"] == 100.0 and second["acc"] < 100.0
    assert doc["delta"]["acc"] == second["acc"] - first["acc"] < 0
    assert doc["delta"]["before"] == str(bn_checkpoint.path) and doc["delta"]["after"] == str(tmp_path / "worse.pt")
    table = CliRunner().invoke(app, args).stdout
    assert "delta (after - before)" in table and f"{second['acc'] - first['acc']:+.2f}" in table
