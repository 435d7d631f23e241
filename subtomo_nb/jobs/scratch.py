"""Scratch space of a running job inside its own job directory.

A job writes only inside its job directory: besides its outputs, the temporary files of the
libraries it calls (Python's :mod:`tempfile`, used e.g. by the STAR reader) and the spill / scratch
directory of dask workers started during the job (``temporary-directory``) go to
``<job_dir>/.scratch``, which is removed when the job ends. A dask client handed in by the caller
keeps the spill directory its workers were started with.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["SCRATCH", "job_scratch"]

#: Name of the scratch directory inside a job directory.
SCRATCH = ".scratch"

_lock = threading.Lock()
#: Scratch directories of the jobs running now, oldest first, and ``tempfile.tempdir`` before them.
_active: list[str] = []
_outside: list[str | None] = [None]


@contextmanager
def job_scratch(job_dir: str | os.PathLike) -> Iterator[Path]:
    """Send temporary files and dask spill to ``<job_dir>/.scratch`` while the block runs.

    Parameters
    ----------
    job_dir : str or os.PathLike
        The job directory (created if needed).

    Yields
    ------
    pathlib.Path
        The scratch directory; removed (with its contents) afterwards.
    """
    import dask

    scratch = Path(job_dir).absolute() / SCRATCH
    scratch.mkdir(parents=True, exist_ok=True)
    with _lock:
        if not _active:
            _outside[0] = tempfile.tempdir
        _active.append(str(scratch))
        tempfile.tempdir = str(scratch)
    try:
        with dask.config.set({"temporary-directory": str(scratch)}):
            yield scratch
    finally:
        # jobs of a sweep run side by side and end in any order: the temporary directory is the
        # newest job still running, else what it was before the first one
        with _lock:
            _active.remove(str(scratch))
            tempfile.tempdir = _active[-1] if _active else _outside[0]
        shutil.rmtree(scratch, ignore_errors=True)
