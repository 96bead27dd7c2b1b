"""bdprune.cli's own behaviour: the help it prints (bdprune alone, every command's examples,
option value names instead of Python type names)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bdprune.cli import app


def test_bdprune_alone_prints_the_help_not_an_error_line():
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['bdprune']; from bdprune.cli import main; main()"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("Usage: bdprune") and "Commands:" in proc.stdout and "scan" in proc.stdout
    assert len(proc.stdout.splitlines()) > 10  # the help as --help prints it, not squeezed into one line


@pytest.mark.parametrize("command", ["scan", "prune", "eval", "demo"])
def test_every_command_help_ends_with_examples_and_names_values_not_types(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    text = result.stdout
    examples = text[text.index("Examples:"):]
    assert examples.count(f"bdprune {command}") >= 2
    body = text[:text.index("Examples:")]
    assert not re.search(r"<(str|int|float|path|list\[[a-z]+\])>|\{[A-Z]+", body, re.I), body
    assert "\\[" not in body  # no Rich escapes in the plain help


PANELS = {"scan": ["Arguments", "Input", "Method", "Thresholds", "Output", "Fleet", "Compute", "Options"],
          "prune": ["Arguments", "Input", "Method", "Thresholds", "Output", "Repair", "Compute", "Options"],
          "eval": ["Arguments", "Input", "Output", "Compute", "Options"],
          "demo": ["Output", "Repair", "Compute", "Options"]}


def _sections(text: str) -> dict[str, list[str]]:
    """Section title -> the option or argument names listed under it."""
    sections: dict[str, list[str]] = {}
    title = None
    for line in text[:text.index("Examples:")].splitlines():
        if re.fullmatch(r"[A-Z][a-z]+:", line):
            title = line[:-1]
            sections[title] = []
        elif title and re.match(r"  \S", line):
            sections[title].append(re.search(r"--[a-z-]+|^[A-Z]+(?:\.\.\.)?", line.strip()).group(0))
    return sections


@pytest.mark.parametrize("command", sorted(PANELS))
def test_options_are_grouped_in_panels_in_a_fixed_order(command):
    result = CliRunner().invoke(app, [command, "--help"])
    sections = _sections(result.stdout)
    assert list(sections) == PANELS[command]
    assert sections["Options"] == ["--help"]  # every other option sits in a named panel
    listed = [name for names in sections.values() for name in names]
    assert len(listed) == len(set(listed))


def test_arguments_show_their_value_name_and_help():
    text = CliRunner().invoke(app, ["scan", "--help"]).stdout
    assert text.startswith("Usage: bdprune scan [OPTIONS] CHECKPOINT...")
    assert re.search(r"CHECKPOINT\.\.\. +Checkpoint files", text)
    assert _sections(text)["Thresholds"] == ["--u", "--fail-threshold", "--thorough", "--exit-zero"]
    assert "--repair" in _sections(CliRunner().invoke(app, ["prune", "--help"]).stdout)["Repair"]
