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
    options = text[text.index("Options:"):text.index("Examples:")]
    assert not re.search(r"<(str|int|float|path|list\[[a-z]+\])>", options, re.I), options
