"""Array-module dispatch: one numerical core for numpy and cupy.

Functions of the core take the array module from their input with :func:`get_xp` and never
convert silently between host and device.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def get_xp(*arrays: Any) -> ModuleType:
    """Return ``cupy`` (``array_api_strict``) if any argument is a cupy (strict-backend) array, else ``numpy``.

    Parameters
    ----------
    *arrays
        Arrays (or scalars/None, which are ignored).
    """
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("array_api_strict"):
            import array_api_strict  # noqa: PLC0415 - the strict test device (subtomo_nb.backend)

            return array_api_strict
        if mod.startswith("cupy"):
            import cupy  # noqa: PLC0415 - optional dependency

            return cupy
    return np


def fft_module(xp: ModuleType) -> ModuleType:
    """FFT module matching ``xp``: ``scipy.fft`` for numpy, ``cupyx.scipy.fft`` for cupy."""
    if xp is np:
        import scipy.fft  # noqa: PLC0415

        return scipy.fft
    if xp.__name__.startswith("array_api_strict"):
        from subtomo_nb.backend import get_backend  # noqa: PLC0415

        return get_backend("strict").fft()
    import cupyx.scipy.fft  # noqa: PLC0415

    return cupyx.scipy.fft


def asnumpy(a: Any) -> np.ndarray:
    """Copy an array to host memory (no-op for numpy arrays)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)
