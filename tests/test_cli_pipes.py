"""A reader that goes away (`bdprune scan ... | head`) ends the run with 141, never a 0 or 1
that a CI gate would read as a verdict, and without a second error."""

import subprocess
import sys


def test_closed_stdout_exits_141_quietly(bn_checkpoint):
    cmd = [sys.executable, "-m", "bdprune", "scan", str(bn_checkpoint.path), *bn_checkpoint.cli_args, "--method", "clp", "--top", "50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the report is written: every write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "error" not in stderr.lower()
