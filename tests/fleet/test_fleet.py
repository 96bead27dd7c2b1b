"""``bdprune scan`` of several checkpoints in this process (the default): error rows, JSON Lines,
--resume, and the options that are refused up front."""

from __future__ import annotations

import json
import sys

import pytest

from _fleet import ARGS, jsonl_rows, scan
from bdprune.checkpoint import file_sha256
from bdprune.errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS
from bdprune.fleet import FleetRun, Row
from bdprune.scoring import ScanFailure, Verdict
from helpers_report import make_result

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_bad_checkpoint_gets_an_error_row_and_the_others_are_scanned(fleet):
    (fleet.models / "b0.pt").write_bytes(b"not a checkpoint at all")
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "json")
    assert result.exit_code == 2, result.stderr
    doc = json.loads(result.stdout)
    assert [r["checkpoint"] for r in doc["results"]] == [f"{fleet.models}/{n}" for n in ("a.pt", "b.safetensors", "c.pt")]
    [error] = doc["errors"]
    assert error["checkpoint"].endswith("b0.pt") and error["sha256"] == file_sha256(fleet.models / "b0.pt")
    assert error["error"].startswith(f"{fleet.models}/b0.pt: ")
    assert result.stderr.strip().splitlines()[-1] == f"error: {error['error']}"


def test_one_checkpoint_keeps_the_one_error_line_and_no_report(fleet):
    (fleet.models / "b0.pt").write_bytes(b"not a checkpoint at all")
    result = scan(fleet.models / "b0.pt", *ARGS, "--data", fleet.data, "-f", "json")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]


def test_jsonl_streams_one_row_per_checkpoint_with_its_sha256(fleet):
    (fleet.models / "b0.pt").write_bytes(b"")
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl")
    assert result.exit_code == 2
    rows = jsonl_rows(result.stdout)
    by_name = {r["checkpoint"].rsplit("/", 1)[1]: r for r in rows}
    assert set(by_name) == {"a.pt", "b.safetensors", "b0.pt", "c.pt"}
    for name in ("a.pt", "b.safetensors", "c.pt"):
        assert by_name[name]["sha256"] == file_sha256(fleet.models / name)
        assert by_name[name]["verdict"]["label"] in ("clean", "suspicious") and "error" not in by_name[name]
    assert "empty" in by_name["b0.pt"]["error"]


def test_jsonl_rows_match_the_json_report(fleet):
    rows = jsonl_rows(scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl").stdout)
    doc = json.loads(scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "json").stdout)
    assert [{k: v for k, v in r.items() if k != "sha256"} for r in rows] == doc["results"]


def test_resume_scans_only_what_the_file_lacks_and_appends_it(fleet):
    log = fleet.root / "audit.jsonl"
    first = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--resume", log)
    assert first.exit_code in (0, 1) and first.stdout == ""
    assert len(jsonl_rows(log.read_text())) == 3
    fleet.add("d.pt", seed=7)
    again = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--resume", log)
    assert again.exit_code == first.exit_code
    rows = jsonl_rows(log.read_text())
    assert [r["checkpoint"].rsplit("/", 1)[1] for r in rows[3:]] == ["d.pt"]  # one scan, one row appended
    assert "skipped 3" in again.stderr
    done = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--resume", log)
    assert len(jsonl_rows(log.read_text())) == 4 and done.exit_code == first.exit_code


def test_resume_retries_error_rows(fleet):
    log = fleet.root / "audit.jsonl"
    bad = fleet.models / "b0.pt"
    bad.write_bytes(b"")
    assert scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--resume", log).exit_code == 2
    bad.unlink()
    fleet.add("b0.pt", seed=5)  # fixed: now a good file (another sha256, so it would be rescanned anyway)
    (fleet.models / "b1.pt").write_bytes(b"")
    assert scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--resume", log).exit_code == 2
    rows = jsonl_rows(log.read_text())
    assert [r["checkpoint"].rsplit("/", 1)[1] for r in rows[4:]] == ["b0.pt", "b1.pt"]  # in process: the order given
    assert "error" not in rows[4] and "error" in rows[5]


def test_resume_tolerates_a_last_line_cut_short_and_cuts_it_off(fleet):
    log = fleet.root / "audit.jsonl"
    scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--resume", log)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed while writing the third row
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--resume", log)
    assert result.exit_code in (0, 1), result.stderr
    rows = jsonl_rows(log.read_text())  # every line parses: the partial row is gone
    assert len(rows) == 3 and rows[2] == json.loads(lines[2])


def test_resume_refuses_a_file_that_is_not_a_jsonl_report(fleet):
    log = fleet.root / "notes.txt"
    log.write_text("hello\nworld\n")
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--resume", log)
    assert result.exit_code == 2 and "line 1 is not a JSON object" in result.stderr
    assert log.read_text() == "hello\nworld\n"


@pytest.mark.parametrize("extra, message", [
    (["-f", "json", "--resume", "r.jsonl"], "--resume needs --format jsonl"),
    (["-f", "jsonl", "--resume", "r.jsonl", "-o", "other.jsonl"], "appends the new rows to FILE"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--jobs", "2", "--ray"], "--jobs and --ray"),
])
def test_bad_fleet_options_are_one_line_and_write_nothing(fleet, extra, message):
    before = sorted(p.name for p in fleet.root.iterdir())
    result = scan(fleet.models, *ARGS, "--data", fleet.data, *extra)
    assert result.exit_code == 2 and result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in fleet.root.iterdir()) == before


def test_ray_missing_is_one_line_with_the_fix(fleet, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "--ray", "-f", "jsonl", "-o", "out.jsonl")
    assert result.exit_code == 2 and result.stdout == ""
    assert "pip install 'bdprune[ray]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (fleet.root / "out.jsonl").exists()


def test_exit_code_is_the_worst_over_the_rows():
    ok, bad = make_result("a.pt"), make_result("b.pt")
    ok.verdict, bad.verdict = Verdict(False, 0.0, 1.0, "r"), Verdict(True, 2.0, 1.0, "r")
    assert FleetRun([Row(0, ok, None), Row(1, ok, None)]).exit_code() == EXIT_CLEAN
    assert FleetRun([Row(0, ok, None), Row(1, bad, None)]).exit_code() == EXIT_FINDINGS
    assert FleetRun([Row(0, bad, None), Row(1, ScanFailure("c.pt", "c.pt: broken"), None)]).exit_code() == EXIT_ERROR
    assert FleetRun([Row(0, ok, None)], resumed=[{"verdict": {"label": "suspicious"}}]).exit_code() == EXIT_FINDINGS


def test_an_interrupted_fleet_says_what_it_wrote_and_how_to_resume(fleet, tmp_path, monkeypatch):
    """Ctrl-C after one row: the error line names the rows appended and the --resume command, not
    "no output was written"; exit 130; the row written stays."""
    import bdprune.fleet as fleet_module

    real = fleet_module.scan_one
    calls = []

    def interrupt_on_the_second(task, *args, **kwargs):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task, *args, **kwargs)

    monkeypatch.setattr(fleet_module, "scan_one", interrupt_on_the_second)
    out = tmp_path / "audit.jsonl"
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "-o", out)
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == (f"error: interrupted; 1 row(s) were appended to {out}: run the same command "
                                                      f"with --resume {out} to scan the rest")
    assert len(jsonl_rows(out.read_text())) == 1
    none = tmp_path / "none.jsonl"
    calls.clear()
    calls.append(None)  # the first task is interrupted at once
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "-o", none)
    assert result.exit_code == 130 and f"interrupted; no row was appended to {none}" in result.stderr and not none.exists()
