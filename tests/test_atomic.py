"""bdprune.atomic: outputs are refused before any work when they cannot be right, and written all-or-nothing."""

from __future__ import annotations

import os

import pytest

from bdprune.atomic import atomic_path, check_output_path, write_text_atomic
from bdprune.errors import BdpruneError


def test_refusals_name_the_path_and_the_fix(tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(b"x")
    (tmp_path / "link.pt").symlink_to(source)
    cases = [
        (dict(output=source, inputs=(source,)), "is the input file"),
        (dict(output=tmp_path / "link.pt", inputs=(source,)), "is the input file"),
        (dict(output=tmp_path), "is a directory"),
        (dict(output=source), "already exists"),
        (dict(output=tmp_path / "no" / "out.bin"), "does not exist"),
        (dict(output=source / "out.bin"), "is not a directory"),
    ]
    for kwargs, problem in cases:
        with pytest.raises(BdpruneError, match=problem) as info:
            check_output_path(kwargs.pop("output"), **kwargs)
        assert "\n" not in str(info.value)
    check_output_path(source, force=True)  # --force replaces an existing file that is not an input


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert out.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out.txt"]
    write_text_atomic(out, "new")
    assert out.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out.txt"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # a normal file's permissions, not mkstemp's 0600
