"""Tests for bdprune/__init__.py: the lazily imported public API is visible to dir()."""

import bdprune


def test_dir_lists_the_public_api_and_module_globals():
    names = dir(bdprune)
    assert names == sorted(names)
    for name in bdprune.__all__:
        assert name in names
    for name in ("__version__", "__getattr__", "__doc__"):
        assert name in names
    assert callable(getattr(bdprune, "scan_model"))
