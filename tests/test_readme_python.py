"""The README's "Python API" examples run as written, in order, in one namespace (a fresh
working directory), and do what the text around them says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from safetensors import safe_open

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the 2-core CI machine runs other jobs
README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section titled ``section`` (up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], flags=re.S)


def test_the_section_has_examples():
    assert len(python_blocks("Python API")) == 3


def test_python_api_examples_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="the examples draw plots (bdprune[plot])")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for block in python_blocks("Python API"):
        exec(compile(block, str(README), "exec"), namespace)
    result, model, pruned, budget = namespace["result"], namespace["model"], namespace["pruned"], namespace["budget"]
    assert result.method == "bnp" and result.samples == 500 and result.flagged_total > 0
    assert pruned.model is not model and pruned.channels == result.flagged_channels()
    assert budget.curve and budget.output == Path("model.pruned.safetensors")
    with safe_open("model.pruned.safetensors", framework="pt") as f:
        meta = f.metadata()
    assert meta["method"] == "bnp" and meta["source_sha256"] == namespace["bdprune"].state_sha256(model)
    assert namespace["ep"].samples == 256 and namespace["ep"].data == "<DataLoader>"
    for name in ("scores.png", "curve.svg", "report.html"):
        assert (tmp_path / name).stat().st_size > 1000, name
    out = capsys.readouterr().out
    assert result.verdict.label in out and "channels pruned" in out
