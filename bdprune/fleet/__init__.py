"""Audit a fleet of checkpoints: in this process, on a pool of worker processes, or on Ray.

Above core: every checkpoint goes through the same :func:`bdprune.scan.load_model` and
:func:`bdprune.core.scan_loaded` as ``bdprune scan`` of one file, so the reports are the same
whichever backend ran them. One checkpoint that cannot be scanned (a bad file, a crashed worker)
becomes a :class:`~bdprune.scoring.ScanFailure` row; the others are still scanned.

>>> from bdprune.fleet import scan_fleet
>>> run = scan_fleet(["models/"], "resnet18", data="clean.npz", jobs=2)      # doctest: +SKIP
>>> run.exit_code()                                                            # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from ..checkpoint import file_sha256
from ..data import ImageSet
from ..errors import BdpruneError, describe
from ..scoring import ScanFailure, ScanResult
from ..verdict import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS

Outcome = ScanResult | ScanFailure


@dataclass(frozen=True)
class ScanSettings:
    """Everything a worker needs besides the checkpoint and the samples (picklable, sent once)."""

    arch: str
    method: str | None = None
    u: float | None = None
    seed: int = 0
    normalize: str = "none"
    device: str = "auto"
    batch_size: int = 128
    num_classes: int | None = None
    arch_args: Mapping[str, str] | None = None
    trust_pickle: bool = False
    fail_threshold: float | None = None
    method_args: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Task:
    """One checkpoint to scan: its place in the order given, its path, and its SHA-256 if known."""

    index: int
    path: str
    sha256: str | None = None


@dataclass
class Row:
    """A finished checkpoint: its place in the order given, the outcome and the file's SHA-256."""

    index: int
    outcome: Outcome
    sha256: str | None


@dataclass
class FleetRun:
    """What :func:`scan_fleet` did: ``rows`` in the order given, and ``resumed``, the rows of
    checkpoints skipped because ``--resume`` FILE already held them (as read from FILE)."""

    rows: list[Row]
    resumed: list[dict] = field(default_factory=list)

    @property
    def results(self) -> list[ScanResult]:
        """The scanned checkpoints' results, in the order given."""
        return [r.outcome for r in self.rows if isinstance(r.outcome, ScanResult)]

    @property
    def failures(self) -> list[ScanFailure]:
        """The checkpoints that could not be scanned, in the order given."""
        return [r.outcome for r in self.rows if isinstance(r.outcome, ScanFailure)]

    def exit_code(self) -> int:
        """The worst over all checkpoints, resumed ones included: 2 for an error, else 1 for a
        suspicious verdict, else 0."""
        if self.failures:
            return EXIT_ERROR
        suspicious = any(r.verdict is not None and r.verdict.suspicious for r in self.results)
        suspicious |= any((row.get("verdict") or {}).get("label") == "suspicious" for row in self.resumed)
        return EXIT_FINDINGS if suspicious else EXIT_CLEAN


def scan_one(task: Task, settings: ScanSettings, images: ImageSet | None, *, catch: bool = True,
             show_progress: bool = False) -> Row:
    """Load and scan one checkpoint; with ``catch`` any exception becomes the row's ScanFailure
    (its message as the CLI prints it, naming the file). The file is hashed after loading, so a
    missing or unreadable file reports the loader's error."""
    from ..core import scan_loaded
    from ..scan import load_model

    try:
        loaded = load_model(task.path, settings.arch, num_classes=settings.num_classes, arch_args=settings.arch_args,
                            trust_pickle=settings.trust_pickle)
        result = scan_loaded(
            loaded, images, method=settings.method, u=settings.u, seed=settings.seed, normalize=settings.normalize,
            device=settings.device, batch_size=settings.batch_size, show_progress=show_progress,
            fail_threshold=settings.fail_threshold, method_args=settings.method_args,
        )
        return Row(task.index, result, task.sha256 or file_sha256(task.path))
    except Exception as exc:
        if not catch:
            raise
        digest = task.sha256 or _try_sha256(task.path)
        return Row(task.index, failure(task, describe(exc), digest), digest)


def failure(task: Task, message: str, sha256: str | None = None) -> ScanFailure:
    """A ScanFailure for ``task`` whose message names the checkpoint."""
    text = message if task.path in message else f"{task.path}: {message}"
    return ScanFailure(task.path, text, sha256 or task.sha256)


def lost(task: Task, message: str) -> Row:
    """The error row of a checkpoint whose worker never sent one back (hashed here instead)."""
    digest = task.sha256 or _try_sha256(task.path)
    return Row(task.index, failure(task, message, digest), digest)


def _try_sha256(path: str) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def scan_fleet(
    checkpoints: Sequence[str | Path],
    arch: str | None,
    *,
    data: str | Path | None = None,
    samples: int = 500,
    jobs: int = 1,
    ray: bool = False,
    ray_address: str | None = None,
    resume: str | Path | None = None,
    on_row: Callable[[Row], None] | None = None,
    strict: bool = False,
    show_progress: bool = True,
    **options,
) -> FleetRun:
    """Scan every checkpoint (files, or directories of them) with the same settings.

    ``jobs`` > 1 runs that many worker processes; ``ray`` runs one Ray task per checkpoint on the
    cluster at ``ray_address`` (None: RAY_ADDRESS or a new local one). ``resume`` names a JSON
    Lines file of an earlier run: checkpoints whose SHA-256 has a row without an error there are
    skipped. ``on_row`` is called with each row as its checkpoint finishes (completion order);
    the returned rows are in the order given. ``strict``: a fleet of one checkpoint scanned in
    this process lets its error propagate instead of becoming a row (``bdprune scan FILE``). ``options`` are :class:`ScanSettings` fields."""
    from ..core import expand_checkpoints
    from ..scan import load_samples

    settings = _checked_settings(arch, data=data, samples=samples, jobs=jobs, **options)
    if ray:
        from .ray_backend import import_ray

        import_ray()  # missing: one line with the fix, before any file is read
    paths = [str(p) for p in expand_checkpoints(checkpoints)]
    strict = strict and len(paths) == 1
    images = load_samples(data, samples, settings.seed) if data is not None else None
    tasks, resumed = _plan(paths, resume)
    if not tasks:  # every checkpoint resumed: start no workers, no Ray
        rows: Iterator[Row] = iter(())
    elif ray:
        from .ray_backend import run_ray

        rows = run_ray(tasks, settings, images, address=ray_address)
    elif jobs > 1:
        from .pool import run_pool

        rows = run_pool(tasks, settings, images, jobs=jobs)
    else:
        rows = (scan_one(t, settings, images, catch=not strict, show_progress=show_progress) for t in tasks)
    done = _collect(rows, len(tasks), on_row, show_progress and (ray or jobs > 1))
    return FleetRun([done[t.index] for t in tasks], resumed)


def _checked_settings(arch: str | None, *, data, samples: int, jobs: int, **options) -> ScanSettings:
    """Refuse what would fail every checkpoint the same way, before any file is read."""
    from ..core import check_options
    from ..data import parse_normalize
    from ..scan import choose_method

    if jobs < 1:
        raise BdpruneError(f"--jobs must be at least 1, got {jobs}")
    if not arch:
        raise BdpruneError("--arch is required", hint="pass --arch NAME (`bdprune archs` lists them) or set arch in [tool.bdprune]")
    settings = ScanSettings(arch=arch, **options)
    check_options(u=settings.u, samples=samples, seed=settings.seed, batch_size=settings.batch_size, device=settings.device)
    choose_method(settings.method, data is not None)[0](settings.method_args)  # unknown method or --method-arg
    parse_normalize(settings.normalize)
    return settings


def _plan(paths: list[str], resume: str | Path | None) -> tuple[list[Task], list[dict]]:
    """The tasks to run, and the resumed rows of the checkpoints skipped."""
    if resume is None:
        return [Task(i, p) for i, p in enumerate(paths)], []
    from .stream import finished_rows

    finished = finished_rows(Path(resume))
    tasks, resumed = [], []
    for i, path in enumerate(paths):
        digest = _try_sha256(path)
        if digest is not None and digest in finished:
            resumed.append(finished[digest])
        else:
            tasks.append(Task(i, path, digest))
    return tasks, resumed


def _collect(rows: Iterator[Row], total: int, on_row, show_bar: bool) -> dict[int, Row]:
    from ..progress import progress_bar

    done: dict[int, Row] = {}
    with progress_bar(total, "checkpoints", enabled=show_bar) as advance:
        for row in rows:
            done[row.index] = row
            if on_row is not None:
                on_row(row)
            advance(1)
    return done
