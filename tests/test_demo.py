"""The built-in demo: shipped files, the efficacy bar of issue 3 and the `bdprune demo` command."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from bdprune import demo
from bdprune.archs import build_model
from bdprune.cli import app


def quiet() -> Console:
    return Console(file=io.StringIO(), width=140, color_system=None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the model is tiny, and on a shared 2-core machine more threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def result(one_thread):
    return demo.run_demo(console=quiet(), device="cpu", show_progress=False)


def test_shipped_model_loads_strict_and_records_how_it_was_made():
    state = load_file(str(demo.MODEL))
    model, _ = build_model("mnist_resnet", None, num_classes=10)
    model.load_state_dict(state, strict=True)
    assert demo.MODEL.stat().st_size < 5 * 1024 * 1024
    with safe_open(str(demo.MODEL), framework="pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "mnist_resnet"
    assert meta["trigger"].startswith("patch:size=3,pos=br")
    assert int(meta["target"]) == demo.demo_target() == 0
    assert float(meta["poison_rate"]) == pytest.approx(0.10)
    assert "train_demo" in meta["made_by"]
    assert json.loads(meta["training"])["seed"] == 0


def test_shipped_data_files_are_small_uint8_and_disjoint():
    clean, test, trig = (np.load(p) for p in (demo.CLEAN, demo.TEST, demo.TEST_TRIGGERED))
    for arr in (clean["images"], test["images"], trig["images"]):
        assert arr.dtype == np.uint8 and arr.shape[1:] == (28, 28)
    assert 100 <= len(clean["images"]) <= 1000 and 100 <= len(test["images"]) <= 1000
    assert np.array_equal(trig["true_labels"], test["labels"])
    # the triggered copies are the test digits with a white 3x3 patch at rows/cols 24..26
    assert (trig["images"][:, 24:27, 24:27] == 255).all()
    outside = np.ones((28, 28), dtype=bool)
    outside[24:27, 24:27] = False
    assert np.array_equal(trig["images"][:, outside], test["images"][:, outside])
    # no clean sample is also a test sample
    flat = lambda a: {x.tobytes() for x in a}  # noqa: E731
    assert not flat(clean["images"]) & flat(test["images"])
    for p in (demo.MODEL, demo.CLEAN, demo.TEST, demo.TEST_TRIGGERED):
        assert p.stat().st_size < 1024 * 1024


def test_default_demo_removes_the_backdoor_and_keeps_accuracy(result):
    # Issue 13's bar, on the demo's held-out test digits: BNP at u=3, then --repair unlearn, takes ASR
    # to <= 5% with ACC within 2 points.
    assert result.scan.method == "bnp" and result.prune.method == "bnp" and result.prune.u == 3.0
    assert result.before.asr >= 90.0 and result.before.acc >= 95.0  # the backdoor is really there
    assert result.after.asr <= 5.0, (result.before.asr, result.after.asr)
    assert result.acc_drop <= 2.0, (result.before.acc, result.after.acc)
    assert result.channels_pruned == result.scan.flagged_total > 0
    assert result.prune.repair == "unlearn"
    assert any(note.startswith(f"--repair unlearn: class {demo.demo_target()},") for note in result.prune.notes), result.prune.notes
    assert result.output is None


def test_cli_demo_without_repair_is_bnp_alone_and_meets_the_issue_3_bar(tmp_path):
    from bdprune.api import evaluate_checkpoints

    runner = CliRunner()
    res = runner.invoke(app, ["demo", "--output-dir", str(tmp_path), "--device", "cpu", "--repair", "none"])
    assert res.exit_code == 0, res.output
    out = res.output
    for text in ("Step 1/3", "Top 10 channels", "Pruned channels", "Evaluation", "delta", "ASR"):
        assert text in out
    assert "Step 2/3: prune (the defaults of `bdprune prune`)" in out and "--repair" not in out.split("Step 2/3")[1].split("\n")[0]
    pruned = tmp_path / demo.PRUNED_NAME
    assert pruned.is_file()
    # Issue 3: BNP at u=3 with the clean samples alone cuts ASR by >= 50 points, ACC drops <= 3 points.
    before, after = evaluate_checkpoints([demo.MODEL, pruned], demo.ARCH, data=demo.TEST, target=demo.demo_target(),
                                         poisoned=demo.TEST_TRIGGERED, device="cpu")
    assert before.asr - after.asr >= 50.0 and before.acc - after.acc <= 3.0, (before, after)
    # a second run refuses to overwrite it without --force, before doing any work
    again = runner.invoke(app, ["demo", "--output-dir", str(tmp_path), "--device", "cpu"])
    assert again.exit_code == 2 and "Step 1/3" not in again.output
    # an unknown repair is refused before any work too
    bad = runner.invoke(app, ["demo", "--device", "cpu", "--repair", "bogus"])
    assert bad.exit_code == 2 and "unknown --repair 'bogus'" in bad.output and "Step 1/3" not in bad.output


# --- the verdict at defaults (issue 14) -----------------------------------------------------

def test_default_verdict_flags_the_shipped_model_and_names_its_target(result):
    v = result.scan.verdict
    assert v.suspicious and v.statistic > v.threshold == 1.0
    assert v.target == demo.demo_target() == 0
    assert v.components["trigger"]["value"] > v.components["trigger"]["bar"] and v.rule == "bnp-trigger"


def test_clean_twin_passes_the_gate_at_defaults():
    """The shipped clean twin: the demo's recipe and split with nothing poisoned (5 epochs)."""
    meta = demo.demo_metadata(demo.CLEAN_TWIN)
    assert meta["poisoned_images"] == "0" and meta["arch"] == "mnist_resnet"
    res = CliRunner().invoke(app, ["scan", str(demo.CLEAN_TWIN), "--arch", "mnist_resnet", "--data", str(demo.CLEAN),
                                   "--device", "cpu", "--format", "json"])
    assert res.exit_code == 0, res.output
    verdict = json.loads(res.stdout)["verdict"]
    assert verdict["label"] == "clean" and verdict["target"] is None
