"""Array-module dispatch: one numerical core for numpy and cupy.

Functions of the core take the array module from their input with :func:`get_xp` and never
convert silently between host and device.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def get_xp(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a cupy array, else ``numpy``.

    Parameters
    ----------
    *arrays
        Arrays (or scalars/None, which are ignored).
    """
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy  # noqa: PLC0415 - optional dependency

            return cupy
    return np


def fft_module(xp: ModuleType) -> ModuleType:
    """FFT module matching ``xp``: ``scipy.fft`` for numpy, ``cupyx.scipy.fft`` for cupy."""
    if xp is np:
        import scipy.fft  # noqa: PLC0415

        return scipy.fft
    import cupyx.scipy.fft  # noqa: PLC0415

    return cupyx.scipy.fft


def asnumpy(a: Any) -> np.ndarray:
    """Copy an array to host memory (no-op for numpy arrays)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)
