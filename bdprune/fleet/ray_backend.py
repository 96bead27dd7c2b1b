"""``--ray``: one Ray task per checkpoint; Ray schedules them (bdprune has no scheduler of its own).

The clean samples go into Ray's object store once (``ray.put``) and every task reads them from
there. Checkpoints travel by path: every node must see the same files at the same paths (a
shared file system), and have bdprune installed. A task asks for one GPU where the cluster has
any (``--device auto`` then runs it on that GPU), else one CPU. Rows come back with ``ray.wait``
as tasks finish. A task whose worker dies is retried once by Ray, then gets an error row.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from ..data import ImageSet
from ..errors import BdpruneError, one_line
from ..options import ScanSettings
from . import Row, Task, lost, scan_one

RAY_HINT = "pip install 'bdprune[ray]'"


def import_ray():
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BdpruneError("--ray needs the ray package, which is not installed", hint=RAY_HINT) from None
    return ray


def run_ray(tasks: list[Task], settings: ScanSettings, images: ImageSet | None, *, address: str | None) -> Iterator[Row]:
    """Scan ``tasks`` as Ray tasks on the cluster at ``address`` (None: RAY_ADDRESS, else a new
    local cluster; an already initialized Ray is used as it is). Yield each row as it finishes."""
    ray = import_ray()
    started = not ray.is_initialized()
    # Ray's driver prints cluster messages ("a worker died ...") to whatever sys.stdout is then,
    # where the report goes: send them to stderr while Ray runs (rows are written to the stdout
    # object captured before). A Ray initialized by the caller may still print after this returns.
    with contextlib.redirect_stdout(sys.stderr):
        yield from _run(ray, started, tasks, settings, images, address)


def _run(ray, started: bool, tasks: list[Task], settings: ScanSettings, images: ImageSet | None, address: str | None) -> Iterator[Row]:
    if started:
        try:
            # log_to_driver=False: a worker's prints must not reach stdout, where the report goes
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # no cluster at that address, a version mismatch, ...
            raise BdpruneError(f"could not start or join Ray ({one_line(exc)})", hint="check --ray-address / RAY_ADDRESS") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        remote = ray.remote(scan_one).options(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=1)
        settings_ref, images_ref = ray.put(settings), ray.put(images)
        waiting = {remote.remote(task, settings_ref, images_ref): task for task in tasks}
        refs = list(waiting)
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            for ref in ready:
                task = waiting.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died twice, the node went away, ...
                    yield lost(task, f"the Ray task scanning it failed ({type(exc).__name__}); not scanned")
    finally:
        if started:
            ray.shutdown()
