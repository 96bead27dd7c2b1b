"""Outputs: never over an input, never half-written, never a temporary file left behind."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from bdprune.errors import BdpruneError

ARCH = ["--arch", "smallcnn", "--arch-arg", "width=4"]  # the model of conftest.files


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# --- refused before any work -----------------------------------------------------------------


def test_prune_output_is_the_input(files, expect_error):
    line = expect_error("prune", files.checkpoint, *ARCH, "-o", files.checkpoint, "--force", names="model.pt")
    assert "never overwrites its input" in line
    # the same file under another spelling
    (files.root / "sub").mkdir()
    expect_error("prune", files.checkpoint, *ARCH, "-o", f"./sub/../{files.checkpoint.name}", "--force", names="model.pt")


def test_prune_output_is_the_data_or_a_link_to_the_input(files, expect_error):
    expect_error("prune", files.checkpoint, *ARCH, "--data", files.data, "-o", files.data, "--force", names="data.npz")
    os.symlink(files.checkpoint, files.root / "link.safetensors")
    line = expect_error("prune", files.checkpoint, *ARCH, "-o", "link.safetensors", "--force", names="link.safetensors")
    assert "never overwrites its input" in line


def test_scan_report_never_overwrites_the_checkpoint_or_the_data(files, expect_error):
    expect_error("scan", files.checkpoint, *ARCH, "-o", files.checkpoint, names="model.pt")
    line = expect_error("scan", files.checkpoint, *ARCH, "--data", files.data, "-o", files.data, names="data.npz")
    assert "never overwrites its input" in line


def test_existing_output_without_force(files, expect_error):
    existing = files.root / "out.safetensors"
    existing.write_bytes(b"keep me")
    line = expect_error("prune", files.checkpoint, *ARCH, "-o", existing, names="out.safetensors")
    assert "already exists" in line and "--force" in line
    assert existing.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "target, problem",
    [
        ("missing_dir/out.safetensors", "the output directory does not exist"),
        ("model.pt/out.safetensors", "is not a directory"),
        (".", "the output path is a directory"),
    ],
)
def test_output_paths_that_cannot_be(files, expect_error, target, problem):
    assert problem in expect_error("prune", files.checkpoint, *ARCH, "-o", target)


class _OsWithoutWritePermission:
    """The os module, except that access(path, W_OK) says no."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def access(path, mode, **kwargs):
        return False if mode & os.W_OK else os.access(path, mode, **kwargs)


def test_unwritable_output_directory(files, expect_error, monkeypatch):
    locked = files.root / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        # root writes anywhere, so chmod cannot lock the folder: make the OS say no instead.
        monkeypatch.setattr("bdprune.atomic.os", _OsWithoutWritePermission())
    else:
        locked.chmod(0o500)
    try:
        line = expect_error("prune", files.checkpoint, *ARCH, "-o", locked / "out.safetensors", names="locked")
        assert "not writable" in line
        line = expect_error("scan", files.checkpoint, *ARCH, "-o", locked / "report.txt", names="locked")
        assert "not writable" in line
    finally:
        locked.chmod(0o700)


def test_temporary_file_cannot_be_created(files, expect_error, monkeypatch):
    """A read-only file system passes no access() test but refuses the temporary file."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("bdprune.atomic.tempfile.mkstemp", refuse)
    line = expect_error("prune", files.checkpoint, *ARCH, "-o", "out.safetensors", names="out.safetensors")
    assert "Read-only file system" in line


# --- failures in the middle of writing -------------------------------------------------------


def _fail_after_writing(monkeypatch, exc: BaseException, seen: list[Path]):
    """Make the pruned file's fsync fail, after the whole payload went into the temporary file
    (what a full disk or a Ctrl-C at that moment looks like), remembering the temporary."""
    real_fsync = os.fsync

    def fsync(fd):
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists(f"/proc/self/fd/{fd}") else None)
        raise exc

    monkeypatch.setattr("bdprune.prune.os.fsync", fsync)
    return real_fsync


@pytest.mark.parametrize(
    "exc, code",
    [(OSError(errno.ENOSPC, "No space left on device"), 2), (KeyboardInterrupt(), 130)],
    ids=["disk-full", "interrupted"],
)
@pytest.mark.parametrize("force", [False, True], ids=["new", "replacing"])
def test_failed_write_leaves_nothing_and_keeps_everything(files, cli, monkeypatch, exc, code, force):
    output = files.root / "out.safetensors"
    if force:
        output.write_bytes(b"previous output")
    before = _digest(files.root)
    seen: list[Path] = []
    _fail_after_writing(monkeypatch, exc, seen)
    out = cli("prune", files.checkpoint, *ARCH, "-o", output, *(["--force"] if force else []))
    assert out.exit_code == code, out.stderr
    assert len(out.error_lines) == 1 and "Traceback" not in out.stderr
    if code == 2:
        assert "No space left on device" in out.error and "out.safetensors" in out.error
    else:
        assert "interrupted; no output was written" in out.error
    assert seen and seen[0] is not None and seen[0].name.startswith(".out.safetensors.")  # it was written...
    assert not seen[0].exists()  # ...and removed
    assert _digest(files.root) == before  # input identical, no output, previous output intact


def test_failed_write_library_level(files, monkeypatch):
    from bdprune.api import prune_checkpoint

    before = _digest(files.root)
    _fail_after_writing(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), [])
    with pytest.raises(BdpruneError, match="No space left on device"):
        prune_checkpoint(files.checkpoint, "smallcnn", arch_args={"width": "4"}, output=files.root / "o.safetensors", show_progress=False)
    assert _digest(files.root) == before


def test_failed_write_in_serialization(files, cli, monkeypatch):
    """Interrupted before a byte is written (while building the payload): nothing appears."""

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("bdprune.prune.safetensors_bytes", boom)
    before = _digest(files.root)
    out = cli("prune", files.checkpoint, *ARCH, "-o", "out.safetensors")
    assert out.exit_code == 130 and len(out.error_lines) == 1
    assert _digest(files.root) == before


def test_failed_report_write_leaves_nothing(files, cli, monkeypatch):
    """scan -o: half the report reaches the temporary file, then the disk is full."""
    real_write_text = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    before = _digest(files.root)
    out = cli("scan", files.checkpoint, *ARCH, "-o", "report.txt")
    assert out.exit_code == 2 and "No space left on device" in out.error and "report.txt" in out.error
    assert "Traceback" not in out.stderr
    assert _digest(files.root) == before


def test_successful_prune_leaves_exactly_one_new_file(files, cli):
    """The control for the tests above: the same run without a fault writes the output only."""
    before = _digest(files.root)
    out = cli("prune", files.checkpoint, *ARCH, "-o", "out.safetensors")
    assert out.exit_code == 0, out.stderr
    after = _digest(files.root)
    assert set(after) - set(before) == {"out.safetensors"}
    assert {k: after[k] for k in before} == before
