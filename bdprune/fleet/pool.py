"""``--jobs N``: N spawned worker processes on this machine, each with its own torch threads.

Workers are started with ``spawn`` (a fork of a process that already runs torch threads can
deadlock) and get the settings and the clean samples once, in their initializer. At most N
checkpoints are in flight. A worker that dies (SIGKILL, the OOM killer, a crash in a decoder)
breaks the whole pool, and every checkpoint in flight fails with it, though only one of them may
be to blame: those are retried one at a time on a fresh pool, and a checkpoint whose worker dies
even alone gets an error row. The rest of the fleet then goes on as before.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator

from ..data import ImageSet
from ..errors import describe
from ..options import ScanSettings
from . import Row, Task, lost, scan_one

WORKER_DIED = "the worker process scanning it died (killed, out of memory or crashed), also when retried alone; not scanned"

_worker: dict = {}  # this worker process's settings and samples, set once by _init_worker


def worker_threads(jobs: int) -> int | None:
    """Torch threads per worker: this machine's cores shared out, at least 1; None (torch's own
    choice) when the user set OMP_NUM_THREADS."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


def _init_worker(settings: ScanSettings, images: ImageSet | None, threads: int | None) -> None:
    import torch

    from ..allocator import keep_freed_memory

    keep_freed_memory()
    if threads is not None:
        torch.set_num_threads(threads)
    _worker.update(settings=settings, images=images)


def _scan(task: Task) -> Row:
    return scan_one(task, _worker["settings"], _worker["images"])


def run_pool(tasks: list[Task], settings: ScanSettings, images: ImageSet | None, *, jobs: int) -> Iterator[Row]:
    """Scan ``tasks`` on ``jobs`` worker processes; yield each row as it finishes."""
    pending, suspects = deque(tasks), deque()
    in_flight: dict[Future, tuple[Task, bool]] = {}  # future -> (task, running alone)
    pool = None
    context = multiprocessing.get_context("spawn")
    try:
        while pending or suspects or in_flight:
            if pool is None:
                pool = ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context, initializer=_init_worker,
                                           initargs=(settings, images, worker_threads(jobs)))
            if suspects:
                if not in_flight:
                    task = suspects.popleft()
                    in_flight[pool.submit(_scan, task)] = (task, True)
            else:
                while pending and len(in_flight) < jobs:
                    task = pending.popleft()
                    in_flight[pool.submit(_scan, task)] = (task, False)
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            broken = False
            for future in finished:
                row, died = _row(future, *in_flight.pop(future), suspects)
                broken |= died
                if row is not None:
                    yield row
            if broken:  # the others in flight die with the pool: collect them, then start afresh
                wait(in_flight)
                for future, (task, alone) in in_flight.items():
                    row, _ = _row(future, task, alone, suspects)
                    if row is not None:
                        yield row
                in_flight.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                pool = None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _row(future: Future, task: Task, alone: bool, suspects: deque) -> tuple[Row | None, bool]:
    """The finished future's row and whether the pool broke under it. A task the pool broke
    under becomes a suspect to retry alone (no row yet), or, if it ran alone, an error row."""
    try:
        return future.result(), False
    except BrokenProcessPool:
        if alone:
            return lost(task, WORKER_DIED), True
        suspects.append(task)
        return None, True
    except Exception as exc:  # the row could not come back (e.g. it did not pickle): still this task's row
        return lost(task, describe(exc)), False
