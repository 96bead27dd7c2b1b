"""JSON Lines for a fleet: rows appended whole as each checkpoint finishes, and read back to resume.

A row is written with one ``write`` of the whole line, then flushed and fsynced, so a run killed
at any moment leaves every finished row intact and at most a last line cut short, which
:func:`finished_rows` ignores and :class:`JsonlSink` cuts off before appending.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

from ..errors import BdpruneError

_BLOCK = 1 << 16


def finished_rows(path: Path) -> dict[str, dict]:
    """SHA-256 -> row for every row of the JSON Lines file ``path`` that has no error (error rows
    are retried). A missing file holds none; a last line cut short is ignored; any other line
    that is not a JSON object means the file is not a ``--format jsonl`` report."""
    if not path.exists():
        return {}
    finished: dict[str, dict] = {}
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                row = _parse(line, number, path)
                digest = None if row is None else row.get("sha256")
                if isinstance(digest, str) and not row.get("error"):
                    finished[digest] = row
    except OSError as exc:
        raise BdpruneError(f"cannot be read ({exc.strerror or exc})", path=path, hint="check the --resume path") from None
    return finished


def _parse(line: bytes, number: int, path: Path) -> dict | None:
    """The row on ``line``; None for a blank line or a last line cut short (no line break)."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
        if isinstance(row, dict):
            return row
    except ValueError:  # also UnicodeDecodeError
        pass
    if not line.endswith(b"\n"):  # the last line, cut short by a kill
        return None
    raise BdpruneError(f"line {number} is not a JSON object", path=path,
                       hint="--resume takes the file a `bdprune scan --format jsonl` run wrote")


class JsonlSink:
    """Writes rows to stdout, or appends them to ``path`` (created if missing), one whole line
    at a time, flushed (and fsynced for a file) after each."""

    def __init__(self, path: Path | None = None, stream: TextIO | None = None):
        self._path = path
        self._stream = stream if stream is not None else sys.stdout
        self._file = None  # opened on the first row, so a run that fails up front leaves no file
        self.written = 0  # rows written so far

    def write(self, line: str) -> None:
        """Append ``line`` and a line break, and make it durable before returning."""
        if self._path is None:
            self._stream.write(line + "\n")
            self._stream.flush()
            self.written += 1
            return
        if self._file is None:
            _cut_partial_line(self._path)
            self._file = open(self._path, "ab")
        self._file.write((line + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.written += 1

    def interrupted(self) -> str:
        """What an interrupted run wrote, where, and how to finish it."""
        if self._path is None:
            return f"interrupted; {self.written} row(s) were written to stdout"
        if not self.written:
            return f"interrupted; no row was appended to {self._path}"
        return (f"interrupted; {self.written} row(s) were appended to {self._path}: run the same command with "
                f"--resume {self._path} to scan the rest")

    def close(self) -> None:
        """Close the file (stdout is left open)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _cut_partial_line(path: Path) -> None:
    """Remove a last line with no line break after it (a row whose writer was killed), so the
    next row starts on a line of its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - _BLOCK)
            f.seek(start)
            block = f.read(pos - start)
            if pos == end and block.endswith(b"\n"):
                return
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            pos = start
        f.truncate(0)


def report_file(output_format: str, output: Path | None, resume: Path | None) -> Path | None:
    """Where a scan's report goes: ``output`` (None: stdout), or with ``resume`` the JSON Lines
    file resumed from, to which the new rows are appended."""
    if resume is None:
        return output
    if output_format != "jsonl":
        raise BdpruneError("--resume needs --format jsonl", hint="it reads and appends to the JSON Lines report of an earlier run")
    if output is not None and output.absolute() != resume.absolute():
        raise BdpruneError("--resume FILE appends the new rows to FILE", hint="leave out -o, or pass the same file")
    return resume
