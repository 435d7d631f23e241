"""Integer Fourier grids of the half layout, shell indices and per-shell reductions.

Frequencies are integer Fourier pixels of the box (cycles per box). The shell of a voxel is
``round(|k|)`` (RELION's ``ROUND``: half away from zero). Grids are returned *open*
(broadcastable, like ``numpy.ogrid``) so that large boxes cost no memory.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from subtomo_nb._array import get_xp

__all__ = [
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
    """RELION's ``ROUND``: round half away from zero, returned as int64."""
    xp = get_xp(x)
    return (xp.sign(x) * xp.floor(xp.abs(x) + 0.5)).astype(xp.int64)


def freq_grid(n: int, ndim: int = 3, xp: ModuleType = np, dtype: Any = None) -> tuple[Any, ...]:
    """Open integer frequency grids of the half transform of a box of side ``n``.

    Parameters
    ----------
    n
        Box size (pixels).
    ndim
        2 (images, half shape ``(n, n//2+1)``) or 3 (volumes, ``(n, n, n//2+1)``).
    xp
        Array module of the result.
    dtype
        dtype of the grids (default int64).

    Returns
    -------
    ``(kx, ky)`` or ``(kx, ky, kz)`` in Fourier pixels, broadcastable to the half shape:
    ``kx = 0..n//2`` on the last axis; ``ky``, ``kz`` = ``fftfreq(n) * n`` (``-n//2`` .. ``n//2-1``
    for even ``n``) on the other axes.
    """
    dtype = xp.int64 if dtype is None else dtype
    k = xp.rint(xp.fft.fftfreq(n, 1.0 / n))
    kx = xp.arange(n // 2 + 1)
    if ndim == 2:
        return kx[None, :].astype(dtype), k[:, None].astype(dtype)
    if ndim == 3:
        return (kx[None, None, :].astype(dtype), k[None, :, None].astype(dtype),
                k[:, None, None].astype(dtype))
    raise ValueError("ndim must be 2 or 3")


def radius_grid(n: int, ndim: int = 3, xp: ModuleType = np, dtype: Any = np.float64) -> Any:
    """``|k|`` (Fourier pixels) on the full half-transform grid, shape ``(n,)*(ndim-1)+(n//2+1,)``."""
    ks = freq_grid(n, ndim, xp, dtype=dtype)
    r2 = sum(k * k for k in ks)
    return xp.sqrt(r2)


def shell_index(n: int, ndim: int = 3, xp: ModuleType = np) -> Any:
    """Integer shell ``round(|k|)`` of every half-transform voxel (int64, half shape)."""
    return round_half_away(radius_grid(n, ndim, xp))


def half_points(n: int, ndim: int = 3, xp: ModuleType = np, dtype: Any = np.float64) -> Any:
    """Frequency vectors ``(x, y[, z])`` of every half-transform voxel, shape ``half + (3,)``.

    For ``ndim=2`` the third component is 0, so the result can be rotated as 3D points (central
    slice). Units: Fourier pixels of a box of side ``n``.
    """
    ks = freq_grid(n, ndim, xp, dtype=dtype)
    shape = (n,) * (ndim - 1) + (n // 2 + 1,)
    full = [xp.broadcast_to(k, shape) for k in ks]
    if ndim == 2:
        full.append(xp.zeros(shape, dtype=dtype))
    return xp.stack(full, axis=-1)


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
    Array ``(n_shells,)`` (float64, complex128 for complex input).
    """
    xp = get_xp(values, shells)
    s = shells.ravel()
    keep = (s >= 0) & (s < n_shells)
    if valid is not None:
        keep = keep & xp.broadcast_to(valid, shells.shape).ravel()
    s = xp.where(keep, s, 0)
    v = xp.broadcast_to(values, shells.shape).ravel()
    if xp.iscomplexobj(v):
        re = xp.bincount(s, weights=xp.where(keep, v.real, 0).astype(xp.float64), minlength=n_shells)
        im = xp.bincount(s, weights=xp.where(keep, v.imag, 0).astype(xp.float64), minlength=n_shells)
        return (re + 1j * im)[:n_shells]
    return xp.bincount(s, weights=xp.where(keep, v, 0).astype(xp.float64), minlength=n_shells)[:n_shells]


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
    xp = get_xp(values_half)
    ndim = values_half.ndim if ndim is None else ndim
    n = int(values_half.shape[-2])
    n_shells = n // 2 + 1 if n_shells is None else n_shells
    sh = shell_index(n, ndim, xp)
    tot = shell_sum(values_half, sh, n_shells, valid)
    cnt = shell_sum(xp.ones(sh.shape), sh, n_shells, valid)
    return xp.where(cnt > 0, tot / xp.where(cnt > 0, cnt, 1), 0)


def shell_masks(n: int, ndim: int = 3, shells: Any = None, xp: ModuleType = np) -> Any:
    """Boolean masks of the half-transform voxels in each shell.

    Parameters
    ----------
    n, ndim
        Box size (pixels) and dimensionality.
    shells
        Shell indices to return (default ``0 .. n//2``).
    xp
        Array module.

    Returns
    -------
    Boolean array ``(len(shells),) + half_shape`` (memory grows as ``n_shells * n**ndim / 2``).
    """
    sh = shell_index(n, ndim, xp)
    shells = xp.arange(n // 2 + 1) if shells is None else xp.asarray(shells)
    return sh[None, ...] == shells.reshape((-1,) + (1,) * ndim)
