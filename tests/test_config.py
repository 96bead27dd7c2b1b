"""[tool.bdprune] in pyproject.toml: found upward, typed, overridden by flags."""

import json

import pytest
from typer.testing import CliRunner

from bdprune.cli import app
from bdprune.config import SETTINGS, load_config
from bdprune.errors import BdpruneError

runner = CliRunner()


def write_config(folder, body):
    (folder / "pyproject.toml").write_text("[project]\nname = 'x'\n\n[tool.bdprune]\n" + body)


def test_found_from_a_subdirectory_and_paths_resolve_against_it(tmp_path):
    write_config(tmp_path, 'arch = "smallcnn"\nu = 2\ndata = "clean.npz"\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    cfg = load_config(sub)
    assert cfg.path == tmp_path / "pyproject.toml"
    assert cfg.values == {"arch": "smallcnn", "u": 2.0, "data": (tmp_path / "clean.npz").resolve()}
    origins = {key: source for key, _, source in cfg.effective()}
    assert "[tool.bdprune]" in origins["u"] and origins["samples"] == "built-in default"
    assert set(origins) == set(SETTINGS)


def test_no_table_means_defaults(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert load_config(tmp_path).values == {}


@pytest.mark.parametrize(
    "body, message",
    [('uu = 3\n', "did you mean u"), ('u = "three"\n', "must be a number"), ("samples = true\n", "must be an integer"), ("u = [\n", "TOML")],
)
def test_bad_config_is_one_clear_error(tmp_path, body, message):
    write_config(tmp_path, body)
    with pytest.raises(BdpruneError, match=message):
        load_config(tmp_path)


def _scan_json(args):
    result = runner.invoke(app, ["scan", *args, "--format", "json", "--exit-zero"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_file_sets_values_and_flags_override(tmp_path, monkeypatch, bn_checkpoint):
    write_config(tmp_path, 'arch = "smallcnn"\nmethod = "clp"\nu = 0.5\n')
    monkeypatch.chdir(tmp_path)
    width = ["--arch-arg", "width=8"]
    from_file = _scan_json([str(bn_checkpoint.path), *width])
    assert (from_file["arch"], from_file["method"], from_file["u"]) == ("smallcnn", "clp", 0.5)
    assert from_file["flagged_total"] > 0  # u=0.5 flags plenty
    from_flag = _scan_json([str(bn_checkpoint.path), *width, "--u", "100"])
    assert from_flag["u"] == 100 and from_flag["flagged_total"] == 0


def test_config_command_prints_sources(tmp_path, monkeypatch):
    write_config(tmp_path, 'method = "ep"\n')
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0
    method_line = next(line for line in result.stdout.splitlines() if line.startswith("method"))
    assert "ep" in method_line and "pyproject.toml" in method_line
    u_line = next(line for line in result.stdout.splitlines() if line.startswith("u "))
    assert "built-in default" in u_line


def test_broken_config_exits_2(tmp_path, monkeypatch):
    write_config(tmp_path, "bogus = 1\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["archs"])
    assert result.exit_code == 2
