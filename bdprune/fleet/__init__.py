"""The scan loop over checkpoint files: in this process (``jobs=1``), on a pool of worker
processes, or on Ray. Every ``bdprune scan`` runs it, of one file or of thousands.

Every checkpoint goes through the same :func:`bdprune.scan.load_model` and
:func:`bdprune.scan.scan_loaded`, so the reports are the same whichever backend ran them. One
checkpoint that cannot be scanned (a bad file, a crashed worker) becomes a
:class:`~bdprune.scoring.ScanFailure` row; the others are still scanned.

>>> from bdprune.fleet import scan_fleet
>>> from bdprune.options import ScanSettings
>>> run = scan_fleet(["models/"], ScanSettings(arch="resnet18"), data="clean.npz", jobs=2)   # doctest: +SKIP
>>> run.exit_code()                                                                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..checkpoint import file_sha256
from ..data import ImageSet
from ..errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, BdpruneError, describe
from ..options import ScanSettings, check_samples
from ..scoring import ScanFailure, ScanResult

Outcome = ScanResult | ScanFailure


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
    from ..scan import load_with, scan_loaded

    try:
        resolved = settings.resolve(has_data=images is not None)  # here: "auto" is this machine's GPU
        loaded = load_with(settings, task.path)
        result = scan_loaded(loaded, images, resolved, show_progress=show_progress)
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


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def expand_checkpoints(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a directory becomes its checkpoint files (by suffix), sorted."""
    from ..shards import find_index

    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and find_index(path) is not None:  # a sharded checkpoint: one model
            out.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
            if not found:
                raise BdpruneError("holds no checkpoint files", path=path, hint=f"expected files ending in {', '.join(CHECKPOINT_SUFFIXES)}")
            out += found
        else:
            out.append(path)
    if not out:
        raise BdpruneError("no checkpoint given", hint="pass one or more checkpoint files or directories")
    return out


def scan_fleet(
    checkpoints: Sequence[str | Path],
    settings: ScanSettings,
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
    image_size: object = None,
) -> FleetRun:
    """Scan every checkpoint (files, or directories of them) with the same ``settings`` and samples.

    ``jobs`` > 1 runs that many worker processes; ``ray`` runs one Ray task per checkpoint on the
    cluster at ``ray_address`` (None: RAY_ADDRESS or a new local one; an address implies ``ray``). ``resume`` names a JSON
    Lines file of an earlier run: checkpoints whose SHA-256 has a row without an error there are
    skipped. ``on_row`` is called with each row as its checkpoint finishes (completion order);
    the returned rows are in the order given. ``strict``: a fleet of one checkpoint scanned in
    this process lets its error propagate instead of becoming a row (``bdprune scan FILE``).
    ``image_size`` (``--image-size``) resizes the samples, which are read once for all."""
    from ..scan import load_samples

    ray = ray or ray_address is not None
    if jobs < 1:
        raise BdpruneError(f"--jobs must be at least 1, got {jobs}")
    if jobs != 1 and ray:
        raise BdpruneError("--jobs and --ray both choose where checkpoints are scanned", hint="pass one of them")
    settings.require_arch()
    settings.resolve(has_data=data is not None)  # what would fail every checkpoint the same way, before any file is read
    check_samples(samples, settings.seed)
    if ray:
        from .ray_backend import import_ray

        import_ray()  # missing: one line with the fix, before any file is read
    paths = [str(p) for p in expand_checkpoints(checkpoints)]
    strict = strict and len(paths) == 1
    images = load_samples(data, samples, settings.seed, image_size=image_size) if data is not None else None
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
