"""``prune --channels REPORT``: a hand-edited or hostile scan report is one clear error naming
it, never a crash, and can ask to zero nothing but BN weight/bias."""

from __future__ import annotations

import json

import pytest

ARCH = ["--arch", "smallcnn", "--arch-arg", "width=4"]  # the model of conftest.files
GOOD = {"flagged": {"bn1": [0]}, "method": "bnp"}

CASES = {
    "not JSON": (b"{not json", "cannot read the scan report (JSONDecodeError)"),
    "binary": (b"\xff\xfe\x00garbage", "cannot read the scan report"),
    "absurd nesting": (b"[" * 100_000 + b"]" * 100_000, "cannot read the scan report (RecursionError)"),
    "a list": ([1, 2], "is not a scan report for this checkpoint"),
    "results not a list": ({"results": 3}, "is not a scan report for this checkpoint"),
    "no flagged": ({"method": "bnp"}, "is not a scan report for this checkpoint"),
    "unknown layer": ({**GOOD, "flagged": {"nope": [0]}}, "layer 'nope' is not a BatchNorm layer of this model"),
    "channel out of range": ({**GOOD, "flagged": {"bn1": [10**30]}}, "bn1 has 4 channels; indices [1000000000000000000000000000000] are out of range"),
    "channel not an int": ({**GOOD, "flagged": {"bn1": [0.0]}}, "are out of range"),
    "pruned_params not allowed": ({**GOOD, "pruned_params": ["running_var"]}, "field 'pruned_params' of the scan report is ['running_var']"),
    "pruned_params a string": ({**GOOD, "pruned_params": "weight"}, "field 'pruned_params'"),
    "u a string": ({**GOOD, "u": "abc"}, "field 'u' of the scan report is 'abc', not a number"),
    "samples a list": ({**GOOD, "samples": [1]}, "field 'samples'"),
    "channels_total negative": ({**GOOD, "channels_total": -1}, "field 'channels_total'"),
    "method not a string": ({**GOOD, "method": 3}, "field 'method'"),
    "no method at all": ({"flagged": {"bn1": [0]}}, "unknown method ''"),
    "fill not a map": ({**GOOD, "method": "bnp+", "fill": [1.0]}, "field 'fill' of the scan report"),
    "fill NaN": ({**GOOD, "method": "bnp+", "fill": {"bn1": [float("nan")] * 4}}, "field 'fill'"),
    "fill a string": ({**GOOD, "method": "bnp+", "fill": {"bn1": ["1"] * 4}}, "field 'fill'"),
    "fill too short": ({**GOOD, "method": "bnp+", "fill": {"bn1": [0.5]}}, "bn1 has 4 channels but 1 fill values"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_channel_reports(files, expect_error, case):
    content, problem = CASES[case]
    report = files.root / "report.json"
    report.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    line = expect_error("prune", files.checkpoint, *ARCH, "--channels", report, "-o", "out.safetensors", names="report.json")
    assert problem in line


def test_a_good_report_prunes(files, cli):
    """The control: the same report, well formed, prunes the listed channel."""
    (files.root / "report.json").write_text(json.dumps(GOOD))
    out = cli("prune", files.checkpoint, *ARCH, "--channels", "report.json", "-o", "out.safetensors")
    assert out.exit_code == 0, out.stderr
    from _pipeline import read_pruned_channels

    assert read_pruned_channels(files.root / "out.safetensors")[0] == {"bn1": [0]}


def test_a_bnp_plus_report_sets_the_pruned_bias_to_its_fill(files, cli):
    """The control for the fill cases: a well-formed bnp+ report gives gamma 0 and beta = fill."""
    from safetensors.torch import load_file

    report = {"flagged": {"bn1": [1, 3]}, "method": "bnp+", "pruned_params": ["weight", "bias"], "fill": {"bn1": [0.0, 0.25, 0.5, -0.75]}}
    (files.root / "report.json").write_text(json.dumps(report))
    out = cli("prune", files.checkpoint, *ARCH, "--channels", "report.json", "-o", "out.safetensors")
    assert out.exit_code == 0, out.stderr
    tensors = load_file(str(files.root / "out.safetensors"))
    assert tensors["bn1.weight"][[1, 3]].tolist() == [0.0, 0.0]
    assert tensors["bn1.bias"][[1, 3]].tolist() == [0.25, -0.75]
