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


def backend_for(xp: Any = None) -> Any:
    """The :class:`~subtomo_nb.backend.Backend` an array module, backend or name stands for.

    Parameters
    ----------
    xp
        None or ``numpy`` (the numpy backend); ``array_api_compat.numpy``; ``array_api_strict``
        (the strict test device); ``cupy`` or ``array_api_compat.cupy``; a backend name
        (``"numpy"``, ``"strict"``, ``"cupy"``) or a :class:`~subtomo_nb.backend.Backend` (returned as is).

    Lets functions that take an ``xp=`` module (grids, gridding corrections) create their arrays
    on the right device (``device=backend_for(xp).device``).
    """
    from subtomo_nb.backend import Backend, get_backend  # noqa: PLC0415 - the backend imports numba lazily

    if isinstance(xp, Backend):
        return xp
    if xp is None or xp is np:
        return get_backend("numpy")
    if isinstance(xp, str):
        return get_backend(xp)
    name = getattr(xp, "__name__", "")
    if name.startswith("array_api_strict"):
        return get_backend("strict")
    if name.startswith("cupy") or name == "array_api_compat.cupy":
        return get_backend("cupy")
    if name in ("numpy", "array_api_compat.numpy"):
        return get_backend("numpy")
    raise TypeError(f"no backend for the array module {xp!r}")


def as_dtype(be: Any, dtype: Any, default: Any = None) -> Any:
    """The backend ``be``'s dtype for ``dtype``.

    Parameters
    ----------
    be
        A :class:`~subtomo_nb.backend.Backend`.
    dtype
        A numpy dtype, scalar type or dtype name (``np.float32``, ``"float64"``, ``float``): mapped
        with ``be.dtype``; a dtype of the backend (e.g. ``array_api_strict.float32``) is returned
        as it is; None gives ``default``.
    default
        The result for ``dtype=None``.
    """
    if dtype is None:
        return default
    if isinstance(dtype, (type, np.dtype, str)):
        return be.dtype(dtype)
    return dtype


def asnumpy(a: Any) -> np.ndarray:
    """Copy an array to host memory (no-op for numpy arrays)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)
