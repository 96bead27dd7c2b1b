"""The CI gate at its defaults on real trained models: small CNNs trained here on scikit-learn's
8x8 digits (the recipe of the verdict zoo's ``digits8-smallcnn8`` models, benchmarks/verdict_zoo.py;
the bars were calibrated on that part of the zoo), scanned through the CLI with no method,
threshold or u given. A backdoored model exits 1 and names its target class in every report
format; the same model trained clean exits 0. Each model trains in about two seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bdprune.archs import build_model
from bdprune.cli import app
from bdprune.training import poison, train_classifier
from bdprune.triggers import parse_trigger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = ["--arch", "smallcnn", "--arch-arg", "width=8", "--device", "cpu"]
MODELS = {  # name: (trigger, rate, target, seed), as in the verdict zoo
    "clean": (None, 0.0, None, 0),
    "badnets": ("patch:size=2,pos=br,margin=0,color=1", 0.10, 5, 12),
    "warp": ("warp:k=4,s=2,seed=1", 0.05, 0, 20),
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory, one_torch_thread):
    """The verdict zoo's digits8 split (seed 14): 300 clean held-out digits in an .npz and the
    1,297 training digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(14).permutation(len(x))
    clean, train = perm[:300], perm[500:][:1297]
    root = tmp_path_factory.mktemp("gate")
    np.savez(root / "clean.npz", images=x[clean], labels=y[clean])
    return root, torch.from_numpy(np.ascontiguousarray(x[train])), torch.from_numpy(y[train])


@pytest.fixture(scope="module")
def checkpoints(digits):
    root, x, y = digits
    out = {}
    for name, (trigger, rate, target, seed) in MODELS.items():
        xs, ys = x, y
        if trigger is not None:
            ps = poison(x, y, parse_trigger(trigger), rate=rate, target=target, seed=seed)
            xs, ys = ps.images, ps.labels
        model, _ = build_model("smallcnn", None, arch_args={"width": "8", "in_channels": "1"})
        train_classifier(model, xs, ys, epochs=30, seed=seed)
        path = root / f"{name}.pt"
        torch.save(model.state_dict(), path)
        out[name] = path
    return root / "clean.npz", out


def scan(path, data, fmt="json"):
    result = CliRunner().invoke(app, ["scan", str(path), *ARGS, "--data", str(data), "--format", fmt])
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, result.stdout


@pytest.mark.parametrize("name", ["badnets", "warp"])
def test_backdoored_model_fails_the_gate_and_names_its_target(checkpoints, name):
    data, paths = checkpoints
    code, out = scan(paths[name], data)
    report = json.loads(out)
    verdict = report["verdict"]
    assert code == 1 and verdict["label"] == "suspicious" and report["method"] == "bnp"
    assert verdict["threshold"] == 1.0 and verdict["statistic"] > 1.0
    assert verdict["components"]["trigger"]["value"] > verdict["components"]["trigger"]["bar"]
    assert verdict["target"] == MODELS[name][2]
    assert len(verdict["drivers"]) == 5


def test_clean_twin_passes_the_gate(checkpoints):
    data, paths = checkpoints
    code, out = scan(paths["clean"], data)
    verdict = json.loads(out)["verdict"]
    assert code == 0 and verdict["label"] == "clean" and verdict["statistic"] < 1.0
    assert verdict["target"] is None and verdict["drivers"] == []


def test_every_report_format_names_the_target(checkpoints):
    data, paths = checkpoints
    _, table = scan(paths["badnets"], data, "table")
    assert "verdict: SUSPICIOUS" in table and "suspected target class 5" in table and "channels:" in table
    _, md = scan(paths["badnets"], data, "markdown")
    row = next(line for line in md.splitlines() if line.startswith("| `"))
    assert "**suspicious**" in row and "| 5 |" in row
    _, sarif = scan(paths["badnets"], data, "sarif")
    [error] = [r for r in json.loads(sarif)["runs"][0]["results"] if r["ruleId"] == "BDP001"]
    assert "suspected target class 5" in error["message"]["text"] and error["properties"]["target"] == 5
    assert len(error["properties"]["channels"]) == 5
