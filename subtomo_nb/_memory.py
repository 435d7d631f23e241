"""Keep the memory of freed large arrays in the process for reuse (glibc malloc settings).

The E-step allocates and frees arrays of tens of MB per batch. glibc serves allocations above
its mmap threshold (dynamic, at most 32 MB) with fresh ``mmap`` pages and returns them on free,
so every batch pays the kernel's page faults again for memory it just released: on the 2-core
benchmark machine one half-set E-step made ~311,000 minor faults and spent 9 s of its 29 s in
the kernel. Raising the mmap and trim thresholds keeps freed memory in the heap for the next
batch (~30,000 faults, ~24 s). The price: the process keeps its peak heap until it exits.

Called by the entry points that run jobs (CLI, job runners, dask E-step tasks), never on import.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Arrays up to this size come from the heap (bytes).
MMAP_THRESHOLD = 1 << 30
#: Freed memory at the top of the heap kept up to this size (bytes).
TRIM_THRESHOLD = (1 << 31) - 1

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (once per process); False where not glibc."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
