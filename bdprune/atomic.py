"""Write output files all-or-nothing: a temporary file beside the target, then an atomic rename."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import BdpruneError


def check_output_path(output: Path, *, inputs: tuple[Path, ...] = (), force: bool = False) -> None:
    """Refuse an output that would overwrite an input, exists without ``force``, or cannot be written."""
    for source in inputs:
        same = output.absolute() == source.absolute() or (output.exists() and source.exists() and output.samefile(source))
        if same:
            raise BdpruneError("the output path is the input file; bdprune never overwrites its input", path=output, hint="pass another -o")
    if output.is_dir():
        raise BdpruneError("the output path is a directory", path=output, hint="pass a file name with -o")
    if output.exists() and not force:
        raise BdpruneError("the output file already exists", path=output, hint="pass --force to replace it, or another -o")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise BdpruneError("is not a directory, so the output cannot go inside it", path=parent, hint="pass another -o")
        raise BdpruneError("the output directory does not exist", path=parent, hint="create it first")
    if not os.access(parent, os.W_OK):
        raise BdpruneError("the output directory is not writable", path=parent, hint="choose a writable location with -o")


@contextmanager
def atomic_path(output: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``output``; on success rename it over ``output``, else delete it."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent if str(output.parent) else ".")
    except OSError as exc:  # read-only file system, no space for even an empty file, ...
        raise BdpruneError(f"could not write the output ({exc.strerror or exc})", path=output, hint="check free space and permissions") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, output)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BdpruneError(f"could not write the output ({exc.strerror or exc})", path=output, hint="check free space and permissions") from None
        raise


def write_text_atomic(output: Path, text: str) -> None:
    """Write ``text`` to ``output`` all-or-nothing."""
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
