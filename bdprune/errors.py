"""The one error type bdprune raises for bad input; the CLI turns it into one line and exit 2."""

from __future__ import annotations


class BdpruneError(Exception):
    """A usage or input problem the user can fix.

    ``str(err)`` is the whole one-line message: it names the file (when there is one) and
    what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None, hint: str | None = None):
        self.path = path
        self.hint = hint
        text = f"{path}: {message}" if path is not None else message
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)
