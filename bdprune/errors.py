"""The one error type bdprune raises for bad input, and the exit codes: 0 = ran and nothing to
report, 1 = findings (a suspicious checkpoint), 2 = usage or input error."""

from __future__ import annotations

import re

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

# Terminal escape sequences (colours, cursor moves) that library messages sometimes carry.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
_LINE_BREAKS = re.compile(r"\s*[\r\n\x0b\x0c\x85\u2028\u2029]+\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: object) -> str:
    """``text`` as one printable line: escape sequences dropped, line breaks joined with a
    space, other control characters shown as ``?`` (a file name can hold any of them)."""
    text = _ANSI.sub("", str(text))
    text = _LINE_BREAKS.sub(" ", text).replace("\t", " ").strip()
    return _CONTROL.sub("?", text)


class BdpruneError(Exception):
    """A usage or input problem the user can fix.

    ``str(err)`` is the whole message, always one line (see :func:`one_line`): it names the file
    (when there is one) and what to do about it.
    """

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, path: object | None = None, hint: str | None = None):
        self.message = message
        self.path = path
        self.hint = hint
        text = f"{path}: {message}" if path is not None else str(message)
        if hint:
            text = f"{text} ({hint})"
        super().__init__(one_line(text))

    def with_path(self, path: object) -> "BdpruneError":
        """This error naming ``path`` (the file being worked on when it arose), unless it
        already names a file."""
        return self if self.path is not None else BdpruneError(self.message, path=path, hint=self.hint)


def describe(exc: BaseException) -> str:
    """The one-line message the CLI prints for ``exc``: a BdpruneError as it is, a refusal of the
    file system with its path and what to check, anything else as an internal error."""
    if isinstance(exc, BdpruneError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return one_line(f"{where}{exc.strerror or exc} (check the path, permissions and free space)")
    return one_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug and please report it)")
