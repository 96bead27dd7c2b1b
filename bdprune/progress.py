"""Progress bars and notes on stderr; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console

_stderr: Console | None = None


class ReportConsole(Console):
    """A stdout console that lets a closed pipe surface as BrokenPipeError (the CLI turns it into
    exit 141) instead of Rich's own exit 1, which would read as "findings" to a CI gate."""

    def on_broken_pipe(self) -> None:  # noqa: D102 - Rich hook
        raise BrokenPipeError


def stdout_console(**kwargs) -> Console:
    """A console for reports on stdout."""
    return ReportConsole(**kwargs)


def stderr_console() -> Console:
    """The one Rich console that writes to stderr (progress, notes, warnings)."""
    global _stderr
    if _stderr is None or _stderr.file is not sys.stderr:
        _stderr = Console(stderr=True, soft_wrap=True)
    return _stderr


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar on stderr only when it is a terminal and ``enabled``."""
    console = stderr_console()
    if not (enabled and console.is_terminal):
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
