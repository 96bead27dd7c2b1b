"""CliRunner tests for ``bdprune scan``: exit codes, the JSON report and ``-o FILE``.

Typer's CliRunner keeps stdout and stderr apart (``result.stdout`` / ``result.stderr``), so the
report is checked on stdout and errors and notes on stderr. Every test runs in its own working
directory so no project configuration file changes the defaults.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bdprune import __version__
from bdprune.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def scan(runner, *args):
    return runner.invoke(app, ["scan", *map(str, args)])


def error_line(result) -> str:
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    return lines[-1]


@pytest.fixture
def backdoored_checkpoint(tmp_path, make_bn_model):
    """The tiny model with one channel of conv3 given 50x the gain: CLP's textbook outlier."""
    model = make_bn_model()
    with torch.no_grad():
        model.conv3.weight[11] *= 50.0
    path = tmp_path / "planted.pt"
    torch.save(model.state_dict(), path)
    return path


# --- exit codes --------------------------------------------------------------------------

def test_exit_0_when_nothing_is_flagged(runner, bn_checkpoint):
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "clp", "--u", "1000", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["flagged_total"] == 0


def test_exit_1_when_channels_are_flagged(runner, bn_checkpoint, backdoored_checkpoint):
    result = scan(runner, backdoored_checkpoint, *bn_checkpoint.cli_args, "--method", "clp", "-f", "json")
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    assert 11 in report["flagged"]["bn3"]
    assert report["flagged_total"] >= 1


def test_exit_1_with_the_table_report_too(runner, bn_checkpoint, backdoored_checkpoint):
    result = scan(runner, backdoored_checkpoint, *bn_checkpoint.cli_args, "--method", "clp")
    assert result.exit_code == 1, result.stderr
    rows = [line.split("│") for line in result.stdout.splitlines() if "│" in line]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert any("bn3" in row and "11" in row and "yes" in row for row in cells), result.stdout


def test_missing_checkpoint_is_exit_2(runner, tmp_path):
    missing = tmp_path / "nope.pt"
    result = scan(runner, missing, "--arch", "smallcnn")
    assert result.exit_code == 2
    line = error_line(result)
    assert str(missing) in line and "no such file" in line


def test_unknown_arch_is_exit_2_with_close_matches(runner, bn_checkpoint):
    result = scan(runner, bn_checkpoint.path, "--arch", "resnet19")
    assert result.exit_code == 2
    line = error_line(result)
    assert "unknown architecture 'resnet19'" in line
    assert "did you mean" in line and "resnet18" in line


@pytest.mark.parametrize("u", ["-1", "nan", "inf", "-inf"])
def test_bad_u_is_exit_2(runner, bn_checkpoint, u):
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "clp", "--u", u)
    assert result.exit_code == 2
    assert "--u" in error_line(result)


def test_non_number_u_is_a_usage_error(runner, bn_checkpoint):
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--u", "three")
    assert result.exit_code == 2
    assert result.stdout == "" and "--u" in result.stderr


def test_bnp_without_data_is_exit_2(runner, bn_checkpoint):
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "bnp")
    assert result.exit_code == 2
    line = error_line(result)
    assert "--method bnp needs --data" in line


def test_unknown_method_is_exit_2_with_close_matches(runner, bn_checkpoint):
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "bpn")
    assert result.exit_code == 2
    line = error_line(result)
    assert "unknown method 'bpn'" in line and "bnp" in line


def test_unknown_format_is_exit_2(runner, bn_checkpoint):
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "clp", "--format", "yaml")
    assert result.exit_code == 2
    assert "yaml" in error_line(result)


def test_data_of_the_wrong_channel_count_is_exit_2(runner, bn_checkpoint, tmp_path):
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros((4, 3, 8, 8), dtype=np.float32))
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--data", rgb)
    assert result.exit_code == 2
    assert "3 channel(s) but the model takes 1" in error_line(result)


@pytest.mark.parametrize(("option", "value"), [("--samples", "0"), ("--batch-size", "0")])
def test_non_positive_counts_are_exit_2(runner, bn_checkpoint, images_npz, option, value):
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--data", images_npz, option, value)
    assert result.exit_code == 2
    assert option in error_line(result)


def test_unknown_option_and_no_arguments_are_usage_errors(runner, bn_checkpoint):
    assert scan(runner, bn_checkpoint.path, "--bogus").exit_code == 2
    assert scan(runner).exit_code == 2


# --- the JSON report -----------------------------------------------------------------------

def check_report(report: dict, *, method: str, u: float, samples: int, layer_sizes: dict[str, int]) -> None:
    assert report["schema_version"] == 1
    assert report["method"] == method and report["u"] == u and report["samples"] == samples
    assert report["device"] == "cpu" and report["version"] == __version__
    assert [layer["name"] for layer in report["layers"]] == list(layer_sizes)
    flagged = {}
    for layer in report["layers"]:
        n = layer_sizes[layer["name"]]
        assert len(layer["scores"]) == len(layer["z"]) == n
        assert all(isinstance(s, float) and math.isfinite(s) for s in layer["scores"])
        # z is the per-layer standardized score (sign flipped when low is suspicious)
        scores = torch.tensor(layer["scores"], dtype=torch.float64)
        sign = -1.0 if method == "ep" else 1.0
        expected_z = sign * (scores - scores.mean()) / scores.std()
        assert torch.allclose(torch.tensor(layer["z"], dtype=torch.float64), expected_z, rtol=1e-9, atol=1e-12)
        assert layer["flagged"] == [c for c, z in enumerate(layer["z"]) if z > u]
        if layer["flagged"]:
            flagged[layer["name"]] = layer["flagged"]
    assert report["flagged"] == flagged


SIZES = {"bn1": 8, "bn2": 16, "bn3": 32, "bn4": 32}


@pytest.mark.parametrize("method", ["bnp", "ep", "clp"])
def test_json_report_has_the_documented_fields(runner, bn_checkpoint, images_npz, method):
    data = [] if method == "clp" else ["--data", images_npz]
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", method, *data, "--u", "1.5", "--format", "json")
    assert result.exit_code in (0, 1), result.stderr
    report = json.loads(result.stdout)
    check_report(report, method=method, u=1.5, samples=0 if method == "clp" else 64, layer_sizes=SIZES)
    assert report["checkpoint"] == str(bn_checkpoint.path)


def test_default_method_is_bnp_with_data_and_clp_without(runner, bn_checkpoint, images_npz):
    with_data = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--data", images_npz, "-f", "json")
    without = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "-f", "json")
    assert json.loads(with_data.stdout)["method"] == "bnp"
    assert json.loads(without.stdout)["method"] == "clp"


def test_samples_draws_that_many(runner, bn_checkpoint, images_npz):
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--data", images_npz, "--samples", "20", "-f", "json")
    assert json.loads(result.stdout)["samples"] == 20


def test_output_file_gets_the_report_and_stdout_stays_empty(runner, bn_checkpoint, images_npz, tmp_path):
    out = tmp_path / "report.json"
    args = [bn_checkpoint.path, *bn_checkpoint.cli_args, "--data", images_npz, "--format", "json"]
    to_file = scan(runner, *args, "-o", out)
    to_stdout = scan(runner, *args)
    assert to_file.exit_code == to_stdout.exit_code
    assert to_file.stdout == ""
    assert str(out) in to_file.stderr
    assert json.loads(out.read_text()) == json.loads(to_stdout.stdout)


def test_output_file_with_the_table_format(runner, bn_checkpoint, tmp_path):
    out = tmp_path / "report.txt"
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "clp", "-o", out)
    assert result.exit_code in (0, 1) and result.stdout == ""
    text = out.read_text()
    assert "bn3" in text and "clp" in text


def test_two_checkpoints_give_one_result_each(runner, bn_checkpoint, backdoored_checkpoint):
    result = scan(runner, bn_checkpoint.path, backdoored_checkpoint, *bn_checkpoint.cli_args, "--method", "clp", "-f", "json")
    assert result.exit_code == 1  # one of them has findings
    report = json.loads(result.stdout)
    assert report["schema_version"] == 1
    assert [r["checkpoint"] for r in report["results"]] == [str(bn_checkpoint.path), str(backdoored_checkpoint)]
    assert 11 in report["results"][1]["flagged"]["bn3"]


# --- learned-mask methods --------------------------------------------------------------------


def test_anp_scan_flags_masks_at_its_default_bound_and_records_the_seed_path(runner, bn_checkpoint, images_npz):
    args = [bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "anp", "--data", images_npz, "--format", "json",
            "--method-arg", "iterations=3", "--method-arg", "batch=16", "--exit-zero"]
    first, again = scan(runner, *args), scan(runner, *args)
    assert first.exit_code == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["method"] == "anp" and report["u"] == 0.2 and report["ranking"] == "absolute"
    assert report["low_is_suspicious"] is True
    for layer in report["layers"]:
        assert all(0.0 <= s <= 1.0 for s in layer["scores"])
        assert layer["flagged"] == [c for c, s in enumerate(layer["scores"]) if s <= 0.2]
    assert json.loads(again.stdout)["layers"] == report["layers"]  # deterministic for the default --seed


def test_method_arg_errors_are_one_line(runner, bn_checkpoint, images_npz):
    base = [bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "rnp", "--data", images_npz]
    result = scan(runner, *base, "--method-arg", "recover_epoch=3")
    assert result.exit_code == 2 and "did you mean recover_epochs" in error_line(result)
    result = scan(runner, *base, "--method-arg", "batch=many")
    assert result.exit_code == 2 and "expected int" in error_line(result)
    result = scan(runner, *base, "--method-arg", "batch")
    assert result.exit_code == 2 and "bad --method-arg" in error_line(result)


def test_learned_masks_need_labelled_data(runner, tmp_path, bn_checkpoint, clean_images):
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=clean_images.numpy())
    result = scan(runner, bn_checkpoint.path, *bn_checkpoint.cli_args, "--method", "anp", "--data", unlabelled)
    assert result.exit_code == 2
    line = error_line(result)
    assert "unlabelled.npz" in line and "no labels" in line
