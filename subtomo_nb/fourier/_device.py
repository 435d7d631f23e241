"""Private helpers of the reconstruction modules (reconstruct, fsc, filters, masks) on any backend.

Integer frequency grids, shell indices, per-shell sums, ``sinc`` and backend/dtype resolution,
written with array-API calls only so that they run on numpy, cupy and the strict test device
(:mod:`subtomo_nb.backend`). They give the same numbers as :mod:`subtomo_nb.fourier.grid` on
numpy (integer grids are exact; the sums use the same bincount). Owned by the fourier-recon
modules until the public grid functions take a backend.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from subtomo_nb.backend import Backend, backend_of, get_backend

__all__ = [
    "backend_dtype",
    "freq_axes",
    "radius_grid",
    "real_dtype_of",
    "resolve_backend",
    "round_half_away",
    "shell_index",
    "shell_sum",
    "sinc",
    "wrapped_freqs",
]


def resolve_backend(backend: Backend | str | None = None, xp: ModuleType | None = None,
                    arrays: tuple[Any, ...] = ()) -> Backend:
    """The backend a function runs on.

    Parameters
    ----------
    backend
        A :class:`~subtomo_nb.backend.Backend` or its name; wins when given.
    xp
        Legacy array-module argument (``numpy``, ``cupy``, ``array_api_strict`` or an
        array-api-compat namespace): mapped to the backend of that name.
    arrays
        Input arrays: their backend (:func:`~subtomo_nb.backend.backend_of`) when neither
        ``backend`` nor a non-numpy ``xp`` is given.
    """
    if backend is not None:
        return get_backend(backend) if isinstance(backend, str) else backend
    if xp is not None:
        name = getattr(xp, "__name__", "")
        if "array_api_strict" in name:
            return get_backend("strict")
        if "cupy" in name:
            return get_backend("cupy")
    return backend_of(*arrays)


def backend_dtype(be: Backend, dtype: Any) -> Any:
    """The backend's dtype for ``dtype`` (a numpy dtype/type, a dtype name or a backend dtype)."""
    if dtype is None:
        return be.xp.float64
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype).rsplit(".", 1)[-1]
    return getattr(be.xp, name)


def real_dtype_of(xp: Any, dtype: Any) -> Any:
    """``dtype`` if it is float32/float64, float32 for complex64, else float64."""
    if dtype == xp.float32 or dtype == xp.complex64:
        return xp.float32
    return xp.float64


def wrapped_freqs(be: Backend, n: int) -> Any:
    """Integer frequencies of an FFT axis of length ``n`` (int64): ``0 .. (n-1)//2, -(n//2) .. -1``.

    Equal to ``rint(fftfreq(n, 1/n))`` (Fourier pixels of a box of side ``n``).
    """
    k = be.xp.arange(n, dtype=be.xp.int64, device=be.device)
    return (k + n // 2) % n - n // 2


def freq_axes(be: Backend, n: int, ndim: int = 3, dtype: Any = None) -> tuple[Any, ...]:
    """Open frequency grids of the half transform of a box of side ``n`` (``grid.freq_grid``).

    Returns ``(kx, ky)`` or ``(kx, ky, kz)`` (Fourier pixels), broadcastable to the half shape
    ``(n,)*(ndim-1) + (n//2+1,)``; int64 unless ``dtype`` is given.
    """
    xp = be.xp
    dtype = xp.int64 if dtype is None else dtype
    k = xp.astype(wrapped_freqs(be, n), dtype)
    kx = xp.arange(n // 2 + 1, dtype=dtype, device=be.device)
    if ndim == 2:
        return xp.reshape(kx, (1, -1)), xp.reshape(k, (-1, 1))
    if ndim == 3:
        return xp.reshape(kx, (1, 1, -1)), xp.reshape(k, (1, -1, 1)), xp.reshape(k, (-1, 1, 1))
    raise ValueError("ndim must be 2 or 3")


def radius_grid(be: Backend, n: int, ndim: int = 3) -> Any:
    """``|k|`` (Fourier pixels, float64) on the half-transform grid of a box of side ``n``."""
    ks = freq_axes(be, n, ndim, be.xp.float64)
    r2 = ks[0] * ks[0]
    for k in ks[1:]:
        r2 = r2 + k * k
    return be.xp.sqrt(r2)


def round_half_away(xp: Any, x: Any) -> Any:
    """RELION's ``ROUND`` of a float array: half away from zero, as int64."""
    return xp.astype(xp.sign(x) * xp.floor(xp.abs(x) + 0.5), xp.int64)


def shell_index(be: Backend, n: int, ndim: int = 3) -> Any:
    """Shell ``round(|k|)`` (int64) of every half-transform voxel of a box of side ``n``."""
    return round_half_away(be.xp, radius_grid(be, n, ndim))


def shell_sum(be: Backend, values: Any, shells: Any, n_shells: int) -> Any:
    """Sum the real ``values`` per shell (float64 ``(n_shells,)``); shells outside ``0..n_shells-1``
    are ignored. ``values`` broadcasts to ``shells``."""
    xp = be.xp
    s = xp.reshape(shells, (-1,))
    keep = (s >= 0) & (s < n_shells)
    s = xp.where(keep, s, 0)
    v = xp.reshape(xp.broadcast_to(values, shells.shape), (-1,))
    w = xp.astype(xp.where(keep, v, 0), xp.float64)
    return be.bincount(s, w, n_shells)


def sinc(xp: Any, x: Any) -> Any:
    """``sin(pi x) / (pi x)``, 1 at 0: ``numpy.sinc``'s formula (same rounding) on any namespace."""
    y = np.pi * x
    eps = float(xp.finfo(x.dtype).eps)
    y = xp.where(y == 0, eps, y)
    return xp.sin(y) / y
