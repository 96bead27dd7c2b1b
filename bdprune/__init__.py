"""bdprune: audit image-classifier checkpoints for backdoor neurons and prune them.

The Python API (``bdprune.scan_model``, ``bdprune.prune_model``, ``bdprune.write_report``, ...) lives in
:mod:`bdprune.api` and is imported on first use, so ``import bdprune`` stays light.
"""

from ._version import __version__

__all__ = ["__version__", "scan_model", "prune_model", "scan_checkpoints", "prune_checkpoint", "evaluate_checkpoints", "write_report",
           "plot_scan", "plot_curve", "state_sha256", "Pruned", "ScanResult"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'bdprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (imported on first use) and the module's own globals, sorted."""
    return sorted(set(__all__) | set(globals()))
