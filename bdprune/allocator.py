"""Process-wide allocator policy for the processes bdprune starts (the CLI, --jobs workers)."""

from __future__ import annotations

import os
import sys


def keep_freed_memory() -> None:
    """Ask glibc to serve every allocation from its heap and keep freed memory there. By default
    each large activation (a ResNet-18 batch: 33 MB) is a fresh mmap whose pages fault in one by
    one and are unmapped when freed, so the next batch faults them in again: a third of a forward
    pass went to page faults (benchmarks/RESULTS.md). Numbers are unchanged; a process that sets
    its own MALLOC_* variables, or a libc other than glibc, is left alone."""
    if not sys.platform.startswith("linux") or any(key.startswith("MALLOC_") for key in os.environ):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): keep its defaults
        pass
