"""``--jobs N``: worker processes give the same reports, in the order given; a worker killed
mid-scan costs its checkpoint an error row, not the fleet."""

from __future__ import annotations

import json
import os

import pytest

from _fleet import ARGS, jsonl_rows, scan, with_pythonpath

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _one_thread_per_worker(monkeypatch):
    # The same thread count as this process, so floating-point sums run in the same order and
    # the scores are bit-identical (and two workers do not fight over the cores).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_two_workers_give_the_sequential_report_in_the_order_given(fleet):
    (fleet.models / "b0.pt").write_bytes(b"\x80\x02 broken pickle")
    fleet.add("d.safetensors", seed=4)
    sequential = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "json")
    parallel = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "json", "--jobs", "2")
    assert parallel.exit_code == sequential.exit_code == 2, parallel.stderr
    assert json.loads(parallel.stdout) == json.loads(sequential.stdout)  # same scores, verdicts, order and error row
    assert len(json.loads(parallel.stdout)["results"]) == 4


def test_a_killed_worker_costs_its_checkpoint_an_error_row(fleet, kill_hook, monkeypatch):
    fleet.add("kill-me.safetensors", seed=3)  # the hook SIGKILLs the worker that loads it
    monkeypatch.setenv("PYTHONPATH", with_pythonpath(kill_hook))  # the workers' start-up; this process is started already
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--jobs", "2")
    assert result.exit_code == 2, result.stderr
    rows = {r["checkpoint"].rsplit("/", 1)[1]: r for r in jsonl_rows(result.stdout)}
    assert set(rows) == {"a.pt", "b.safetensors", "c.pt", "kill-me.safetensors"}  # nothing lost
    assert "worker process scanning it died" in rows["kill-me.safetensors"]["error"]
    assert rows["kill-me.safetensors"]["sha256"]
    for name in ("a.pt", "b.safetensors", "c.pt"):  # in flight beside it, or queued: retried and scanned
        assert "error" not in rows[name] and rows[name]["verdict"]["label"] in ("clean", "suspicious")
    assert os.environ.get("PYTHONPATH", "").startswith(kill_hook)
