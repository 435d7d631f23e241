"""Integer Fourier grids of the half layout, shell indices and per-shell reductions.

Frequencies are integer Fourier pixels of the box (cycles per box). The shell of a voxel is
``round(|k|)`` (RELION's ``ROUND``: half away from zero). Grids are returned *open*
(broadcastable, like ``numpy.ogrid``) so that large boxes cost no memory.

Every function runs on the arrays of any backend (numpy, cupy, the strict test device): the
reductions take the backend from their input (:func:`~subtomo_nb.backend.backend_of`); the
creation functions take ``xp`` -- an array module (``numpy``, ``array_api_strict``, ``cupy``,
their ``array_api_compat`` namespaces), a backend name or a :class:`~subtomo_nb.backend.Backend`
-- and create their arrays on that backend's device (or ``device=``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subtomo_nb._array import as_dtype, backend_for
from subtomo_nb.backend import backend_of

__all__ = [
    "wrapped_freqs",
    "freq_grid",
    "radius_grid",
    "shell_index",
    "round_half_away",
    "shell_sum",
    "radial_average",
    "shell_masks",
    "half_points",
]


def round_half_away(x: Any) -> Any:
    """RELION's ``ROUND``: round half away from zero, returned as int64 (same backend as ``x``)."""
    be = backend_of(x)
    xp = be.xp
    if not isinstance(x, np.ndarray) and not be.owns(x):
        x = np.asarray(x)
    if not xp.isdtype(x.dtype, "real floating"):
        return xp.astype(x, xp.int64)
    return xp.astype(xp.sign(x) * xp.floor(xp.abs(x) + 0.5), xp.int64)


def wrapped_freqs(n: int, xp: Any = np, dtype: Any = None, device: Any = None) -> Any:
    """Integer frequencies of an FFT axis of length ``n`` in wrapped (FFT) order.

    ``0 .. (n-1)//2, -(n//2) .. -1`` (Fourier pixels of a box of side ``n``): ``fftfreq(n) * n``,
    exactly. ``xp`` is an array module, backend or backend name; ``dtype`` (default int64) a numpy
    dtype or the backend's; ``device`` defaults to the backend's.
    """
    be = backend_for(xp)
    X = be.xp
    i = X.arange(n, dtype=X.int64, device=be.device if device is None else device)
    return X.astype(X.where(i < (n + 1) // 2, i, i - n), as_dtype(be, dtype, X.int64))


def freq_grid(n: int, ndim: int = 3, xp: Any = np, dtype: Any = None, device: Any = None) -> tuple[Any, ...]:
    """Open integer frequency grids of the half transform of a box of side ``n``.

    Parameters
    ----------
    n
        Box size (pixels).
    ndim
        2 (images, half shape ``(n, n//2+1)``) or 3 (volumes, ``(n, n, n//2+1)``).
    xp
        Array module (or backend, or backend name) of the result.
    dtype
        dtype of the grids (default int64): a numpy dtype or the backend's.
    device
        Device of the result (default the backend's).

    Returns
    -------
    ``(kx, ky)`` or ``(kx, ky, kz)`` in Fourier pixels, broadcastable to the half shape:
    ``kx = 0..n//2`` on the last axis; ``ky``, ``kz`` = ``fftfreq(n) * n`` (``-n//2`` .. ``n//2-1``
    for even ``n``) on the other axes.
    """
    be = backend_for(xp)
    X = be.xp
    dev = be.device if device is None else device
    dtype = as_dtype(be, dtype, X.int64)
    k = wrapped_freqs(n, be, dtype, dev)
    kx = X.astype(X.arange(n // 2 + 1, dtype=X.int64, device=dev), dtype)
    if ndim == 2:
        return X.reshape(kx, (1, -1)), X.reshape(k, (-1, 1))
    if ndim == 3:
        return X.reshape(kx, (1, 1, -1)), X.reshape(k, (1, -1, 1)), X.reshape(k, (-1, 1, 1))
    raise ValueError("ndim must be 2 or 3")


def radius_grid(n: int, ndim: int = 3, xp: Any = np, dtype: Any = np.float64, device: Any = None) -> Any:
    """``|k|`` (Fourier pixels) on the full half-transform grid, shape ``(n,)*(ndim-1)+(n//2+1,)``."""
    be = backend_for(xp)
    ks = freq_grid(n, ndim, be, dtype=dtype, device=device)
    r2 = ks[0] * ks[0]
    for k in ks[1:]:
        r2 = r2 + k * k
    return be.xp.sqrt(r2)


def shell_index(n: int, ndim: int = 3, xp: Any = np, device: Any = None) -> Any:
    """Integer shell ``round(|k|)`` of every half-transform voxel (int64, half shape)."""
    return round_half_away(radius_grid(n, ndim, xp, device=device))


def half_points(n: int, ndim: int = 3, xp: Any = np, dtype: Any = np.float64, device: Any = None) -> Any:
    """Frequency vectors ``(x, y[, z])`` of every half-transform voxel, shape ``half + (3,)``.

    For ``ndim=2`` the third component is 0, so the result can be rotated as 3D points (central
    slice). Units: Fourier pixels of a box of side ``n``.
    """
    be = backend_for(xp)
    X = be.xp
    dtype = as_dtype(be, dtype)
    ks = freq_grid(n, ndim, be, dtype=dtype, device=device)
    shape = (n,) * (ndim - 1) + (n // 2 + 1,)
    full = [X.broadcast_to(k, shape) for k in ks]
    if ndim == 2:
        full.append(X.zeros(shape, dtype=dtype, device=be.device if device is None else device))
    return X.stack(full, axis=-1)


def shell_sum(values: Any, shells: Any, n_shells: int, valid: Any = None) -> Any:
    """Sum ``values`` per shell with a bincount (no Python loops).

    Parameters
    ----------
    values
        Real array (same shape as ``shells``); complex values are summed per part.
    shells
        Integer shell of every element.
    n_shells
        Length of the result; elements with shell ``>= n_shells`` (or ``< 0``) are ignored.
    valid
        Optional boolean mask of elements to include.

    Returns
    -------
    Array ``(n_shells,)`` (float64, complex128 for complex input), on the backend of the input.
    """
    be = backend_of(values, shells)
    xp = be.xp
    s = xp.reshape(shells, (-1,))
    keep = (s >= 0) & (s < n_shells)
    if valid is not None:
        keep = keep & xp.reshape(xp.broadcast_to(valid, shells.shape), (-1,))
    s = xp.where(keep, s, 0)
    v = xp.reshape(xp.broadcast_to(values, shells.shape), (-1,))
    if xp.isdtype(v.dtype, "complex floating"):
        re = be.bincount(s, xp.astype(xp.where(keep, xp.real(v), 0), xp.float64), n_shells)
        im = be.bincount(s, xp.astype(xp.where(keep, xp.imag(v), 0), xp.float64), n_shells)
        return re + 1j * im
    return be.bincount(s, xp.astype(xp.where(keep, v, 0), xp.float64), n_shells)


def radial_average(values_half: Any, ndim: int | None = None, n_shells: int | None = None,
                   valid: Any = None) -> Any:
    """Mean of a half-layout array per shell ``round(|k|)``.

    Every stored half-transform element counts once (the redundant ``x = 0`` plane included,
    as RELION's loops over FFTW arrays do).

    Parameters
    ----------
    values_half
        Real array of half shape ``(n, n, n//2+1)`` or ``(n, n//2+1)``.
    ndim
        2 or 3; default ``values_half.ndim``.
    n_shells
        Number of shells returned; default ``n//2 + 1``.
    valid
        Optional boolean mask of elements to include.

    Returns
    -------
    Per-shell means ``(n_shells,)``, float64 (0 for empty shells).
    """
    be = backend_of(values_half)
    xp = be.xp
    ndim = values_half.ndim if ndim is None else ndim
    n = int(values_half.shape[-2])
    n_shells = n // 2 + 1 if n_shells is None else n_shells
    sh = shell_index(n, ndim, be)
    tot = shell_sum(values_half, sh, n_shells, valid)
    cnt = shell_sum(xp.ones(sh.shape, dtype=xp.float64, device=be.device), sh, n_shells, valid)
    return xp.where(cnt > 0, tot / xp.where(cnt > 0, cnt, 1), 0)


def shell_masks(n: int, ndim: int = 3, shells: Any = None, xp: Any = np, device: Any = None) -> Any:
    """Boolean masks of the half-transform voxels in each shell.

    Parameters
    ----------
    n, ndim
        Box size (pixels) and dimensionality.
    shells
        Shell indices to return (default ``0 .. n//2``): a sequence or an integer array of the backend.
    xp
        Array module (or backend).
    device
        Device of the result (default the backend's).

    Returns
    -------
    Boolean array ``(len(shells),) + half_shape`` (memory grows as ``n_shells * n**ndim / 2``).
    """
    be = backend_for(xp)
    X = be.xp
    dev = be.device if device is None else device
    sh = shell_index(n, ndim, be, device=dev)
    if shells is None:
        shells = X.arange(n // 2 + 1, dtype=X.int64, device=dev)
    elif not be.owns(shells):
        shells = be.to_device(np.asarray(shells, dtype=np.int64), "metadata")
    return X.expand_dims(sh, axis=0) == X.reshape(shells, (-1,) + (1,) * ndim)
