"""``--ray``: one Ray task per checkpoint on a local Ray started here (2 CPUs), the same reports
as a local run; a task whose worker is killed gets an error row. Skipped without ray installed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import bdprune
from _fleet import ARGS, jsonl_rows, scan, with_pythonpath

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def local_ray(kill_hook):
    """Ray on this machine for the module. Its workers import the bdprune under test (this
    checkout, not only an installed copy) and the kill hook, through the PYTHONPATH they inherit."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = with_pythonpath(str(Path(bdprune.__file__).resolve().parents[1]), kill_hook)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def test_ray_gives_the_local_report(fleet):
    (fleet.models / "b0.pt").write_bytes(b"")
    local = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "json")
    remote = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "json", "--ray")
    assert remote.exit_code == local.exit_code == 2, remote.stderr
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert ray.is_initialized()  # an initialized Ray is used as it is, not shut down


def test_ray_streams_jsonl_and_a_killed_task_is_an_error_row(fleet):
    fleet.add("kill-me.safetensors", seed=3)
    # -o: Ray's own "a worker died" message may reach this process's stdout after the scan, since
    # the Ray here was started by the test, not by bdprune (which would shut it down in time)
    result = scan(fleet.models, *ARGS, "--data", fleet.data, "-f", "jsonl", "--ray", "-o", "audit.jsonl")
    assert result.exit_code == 2, result.stderr
    rows = {r["checkpoint"].rsplit("/", 1)[1]: r for r in jsonl_rows((fleet.root / "audit.jsonl").read_text())}
    assert set(rows) == {"a.pt", "b.safetensors", "c.pt", "kill-me.safetensors"}
    assert "Ray task scanning it failed" in rows["kill-me.safetensors"]["error"] and rows["kill-me.safetensors"]["sha256"]
    assert all("error" not in rows[n] for n in ("a.pt", "b.safetensors", "c.pt"))
