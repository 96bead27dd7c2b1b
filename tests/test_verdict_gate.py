"""The CI gate at its defaults, on small trained models checked in as fixtures (tests/fixtures/,
made by its make_fixtures.py and pinned by SHA256SUMS): scanned through the CLI with no method,
threshold or u given, a backdoored model exits 1 and names its target class in every report
format; the clean model exits 0. Fixed weights keep the outcome from depending on which CPU
kernels trained the model (issue 25); how far the statistic moves with the kernels at inference
is in benchmarks/RESULTS.md ("Kernel spread"). One test below still trains from scratch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bdprune.cli import app
from fixtures.make_fixtures import ARCH_ARGS, MODELS, digits_split, path_of, recorded, sha256, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = ["--arch", "smallcnn", *[a for k, v in ARCH_ARGS.items() for a in ("--arch-arg", f"{k}={v}")], "--device", "cpu"]


@pytest.fixture(scope="module")
def clean_npz(tmp_path_factory):
    """The fixtures' 300 held-out clean digits (scikit-learn's bundled 8x8 digits, split seed 14)."""
    d = digits_split()
    path = tmp_path_factory.mktemp("gate") / "clean.npz"
    np.savez(path, images=d["clean_x"], labels=d["clean_y"])
    return path


def scan(path, data, fmt="json"):
    result = CliRunner().invoke(app, ["scan", str(path), *ARGS, "--data", str(data), "--format", fmt])
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, result.stdout


def test_the_fixtures_are_the_recorded_files():
    sums = recorded()
    assert sorted(sums) == sorted(path_of(name).name for name in MODELS)
    for name in MODELS:
        assert sha256(path_of(name)) == sums[path_of(name).name], f"{name} is not the file make_fixtures.py recorded"


@pytest.mark.parametrize("name", ["digits_blended", "digits_dynamic"])
def test_backdoored_fixture_fails_the_gate_and_names_its_target(clean_npz, name):
    code, out = scan(path_of(name), clean_npz)
    report = json.loads(out)
    verdict = report["verdict"]
    assert code == 1 and verdict["label"] == "suspicious" and report["method"] == "bnp" and verdict["rule"] == "bnp-trigger"
    assert verdict["threshold"] == 1.0 and verdict["statistic"] > 1.0
    assert verdict["components"]["trigger"]["value"] > verdict["components"]["trigger"]["bar"]
    assert verdict["target"] == MODELS[name][2] and verdict["targets"] == [MODELS[name][2]]
    assert len(verdict["drivers"]) == 5


def test_clean_fixture_passes_the_gate(clean_npz):
    code, out = scan(path_of("digits_clean"), clean_npz)
    verdict = json.loads(out)["verdict"]
    assert code == 0 and verdict["label"] == "clean" and verdict["statistic"] < 1.0
    assert verdict["target"] is None and verdict["targets"] == [] and verdict["drivers"] == []


def test_exit_zero_reports_the_backdoored_fixture_but_exits_0(clean_npz):
    result = CliRunner().invoke(app, ["scan", str(path_of("digits_blended")), *ARGS, "--data", str(clean_npz), "-f", "json", "--exit-zero"])
    assert result.exit_code == 0 and json.loads(result.stdout)["verdict"]["label"] == "suspicious"


def test_every_report_format_names_the_target_and_the_rule(clean_npz):
    path = path_of("digits_blended")
    _, table = scan(path, clean_npz, "table")
    assert "verdict: SUSPICIOUS (bnp-trigger = " in table and "suspected target class 3" in table and "channels:" in table
    _, md = scan(path, clean_npz, "markdown")
    row = next(line for line in md.splitlines() if line.startswith("| `"))
    assert "**suspicious**" in row and "| bnp-trigger |" in row and "| 3 |" in row
    _, sarif = scan(path, clean_npz, "sarif")
    [error] = [r for r in json.loads(sarif)["runs"][0]["results"] if r["ruleId"] == "BDP001"]
    assert "by rule bnp-trigger" in error["message"]["text"] and "suspected target class 3" in error["message"]["text"]
    assert error["properties"]["target"] == 3 and error["properties"]["rule"] == "bnp-trigger"
    assert len(error["properties"]["channels"]) == 5


def test_a_backdoor_trained_here_scores_above_the_clean_model_trained_here(clean_npz, tmp_path):
    """From scratch, on this machine's kernels: the Blended recipe against the clean one. The margin
    asserted is half the smallest gap measured over six kernel settings (benchmarks/RESULTS.md,
    "Kernel spread", on a 2-core AMD EPYC: Blended trained here 1.34-1.38, clean 0.00-0.29); the exit
    code of each is what the fixtures test, since a model trained elsewhere differs (the BadNets
    recipe trained here scored 0.94-1.00 against its fixture's 1.07: training alone can cross the bar)."""
    from safetensors.torch import save_file

    stats = {}
    for name in ("digits_blended", "digits_clean"):
        model = train(name)
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
        stats[name] = json.loads(scan(path, clean_npz)[1])["verdict"]["statistic"]
    assert stats["digits_blended"] > stats["digits_clean"] + 0.5, stats
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("name, code", [("digits_clean", 0), ("digits_blended", 1)])
def test_thorough_adds_the_class_gap_and_keeps_the_fixtures_verdicts(clean_npz, name, code):
    result = CliRunner().invoke(app, ["scan", str(path_of(name)), *ARGS, "--data", str(clean_npz), "-f", "json", "--thorough"])
    verdict = json.loads(result.stdout)["verdict"]
    gap = verdict["components"]["class_gap"]
    assert result.exit_code == code and verdict["rule"] == "bnp-trigger+class-gap"
    assert 0.0 <= gap["value"] <= 1.0 and gap["bar"] > 0
    assert verdict["statistic"] == pytest.approx(max(verdict["components"]["trigger"]["value"] / 0.7, gap["value"] / gap["bar"]))
    if code:
        assert verdict["target"] == MODELS[name][2]
