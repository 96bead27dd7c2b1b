"""``--format json``: one document per checkpoint, a results list for several, errors beside them."""

from __future__ import annotations

import json

from bdprune.report.json_report import results_to_json
from bdprune.scoring import SCHEMA_VERSION, ScanFailure
from helpers_report import make_result


def test_one_checkpoint_is_its_own_document_and_several_a_list():
    a, b = make_result("a.pt"), make_result("b.pt", spike=1.0)
    one = json.loads(results_to_json([a]))
    assert one == json.loads(json.dumps(a.to_dict())) and one["schema_version"] == SCHEMA_VERSION
    assert one["verdict"]["label"] == a.verdict.label and one["flagged"] == a.flagged_channels()
    several = json.loads(results_to_json([a, b], [ScanFailure("c.pt", "c.pt: broken", "ab12")]))
    assert [r["checkpoint"] for r in several["results"]] == ["a.pt", "b.pt"]
    assert several["errors"] == [{"checkpoint": "c.pt", "sha256": "ab12", "error": "c.pt: broken"}]


def test_non_finite_numbers_become_null():
    result = make_result("a.pt")
    result.layers[0].mean = float("nan")
    doc = json.loads(results_to_json([result]))
    assert doc["layers"][0]["mean"] is None
