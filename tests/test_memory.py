"""With keep_freed_memory, glibc reuses the pages of freed arrays instead of faulting in new ones."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from subtomo_nb._memory import keep_freed_memory

#: Arrays of 0.5-3.9 MiB (below numpy's huge-page size), three alive at a time, as the E-step's
#: per-batch temporaries; prints the minor page faults of the loop.
_PATTERN = """
import resource, sys
import numpy as np
if sys.argv[1] == "1":
    from subtomo_nb._memory import keep_freed_memory
    assert keep_freed_memory()
rng = np.random.default_rng(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
alive = []
for i in range(200):
    alive.append(np.ones(int(rng.uniform(0.5, 3.9) * 2**20) // 8))
    if len(alive) > 3:
        alive.pop(0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PATTERN, setting], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_arrays_are_reused_without_new_page_faults():
    assert keep_freed_memory() and keep_freed_memory()   # idempotent
    default, kept = _faults("0"), _faults("1")
    assert kept < 0.5 * default, (kept, default)
