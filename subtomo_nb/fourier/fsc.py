"""Fourier shell correlation and resolution (RELION ``getFSC``; relion-conventions.md §9).

:func:`fsc` and :func:`fsc_true_from_half` run on any array backend (:mod:`subtomo_nb.backend`:
numpy, cupy, the strict test device) and return curves on the input's backend and device.
:func:`resolution` returns a Python float: it accepts a host curve (numpy array, list) or a
device curve, which it brings to the host with ``be.to_host(curve, "results")`` (counted).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subtomo_nb.backend import backend_of
from subtomo_nb.fourier.fft import rfft2, rfft3
from subtomo_nb.fourier.grid import shell_index, shell_sum

__all__ = ["fsc", "fsc_true_from_half", "resolution", "shell_resolution_A"]


def _to_half(x: Any, mask: Any) -> tuple[Any, int, int]:
    xp = backend_of(x).xp
    if xp.isdtype(x.dtype, "complex floating"):
        ndim = 3 if (x.ndim == 3 and x.shape[0] == x.shape[1]) else 2
        if x.shape[-1] != x.shape[-2] // 2 + 1:
            raise ValueError(f"complex input of shape {x.shape} is not a half transform")
        return x, ndim, int(x.shape[-2])
    if x.ndim not in (2, 3):
        raise ValueError("real maps must be 2D or 3D")
    if mask is not None:
        x = x * mask
    return (rfft3(x) if x.ndim == 3 else rfft2(x)), x.ndim, int(x.shape[-1])


def fsc(map1: Any, map2: Any, mask: Any = None) -> Any:
    """Fourier shell correlation per shell ``round(|k|)``, as RELION's ``getFSC``.

    ``FSC(i) = sum Re(conj(F1) F2) / sqrt(sum |F1|**2 sum |F2|**2)`` over the stored elements of
    the half transforms in shell ``i`` (the ``x = 0`` plane is counted as stored, as RELION does);
    shells with a zero denominator give 0.

    Parameters
    ----------
    map1, map2
        Real centred maps (2D or 3D, same shape) or their half transforms, on one backend.
    mask
        Optional real-space mask (same backend as the maps) multiplied into both real maps
        before transforming.

    Returns
    -------
    FSC ``(N//2 + 1,)`` (float64, on the backend and device of the input).
    """
    be = backend_of(map1, map2)
    xp = be.xp
    F1, ndim, n = _to_half(map1, mask)
    F2, _, _ = _to_half(map2, mask)
    sh = shell_index(n, ndim, be)
    nsh = n // 2 + 1
    num = shell_sum(xp.real(xp.conj(F1) * F2), sh, nsh)
    d1 = shell_sum(xp.abs(F1) ** 2, sh, nsh)
    d2 = shell_sum(xp.abs(F2) ** 2, sh, nsh)
    den = xp.sqrt(d1 * d2)
    return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)


def shell_resolution_A(shell: float, box: int, pixel_size_A: float) -> float:
    """Resolution (Å) of a (fractional) shell: ``box * pixel / shell``; 999 for shell 0 (RELION)."""
    return 999.0 if shell <= 0 else float(box) * float(pixel_size_A) / float(shell)


def resolution(fsc_curve: Any, box: int, pixel_size_A: float, threshold: float = 0.143,
               interpolate: bool = False) -> float:
    """Resolution (Å) where an FSC curve first drops below ``threshold``.

    The reported shell is the last shell ``i - 1`` before the first shell ``i >= 1`` with
    ``FSC(i) < threshold`` (relion_postprocess); with ``interpolate=True`` the crossing is
    linearly interpolated between ``i - 1`` and ``i``:
    ``s = i - 1 + (FSC(i-1) - t) / (FSC(i-1) - FSC(i))``. A curve that never crosses reports its
    last shell (Nyquist for ``N//2 + 1`` shells).

    Parameters
    ----------
    fsc_curve
        FSC per shell (shell 0 first): a host sequence/array, or a device array of any backend
        (copied to the host with ``to_host(..., "results")``).
    box
        Box size (pixels) the shells refer to.
    pixel_size_A
        Pixel size (Å).
    threshold
        FSC threshold (0.143 gold standard; 0.5 for half-set refinement).
    interpolate
        Linear interpolation of the crossing.

    Returns
    -------
    Resolution in Å (``box * pixel / shell``; 999 for shell 0).
    """
    be = backend_of(fsc_curve)
    f = np.asarray(be.to_host(fsc_curve, "results"), dtype=np.float64)
    below = np.nonzero(f[1:] < threshold)[0]
    if below.size == 0:
        return shell_resolution_A(len(f) - 1, box, pixel_size_A)
    i = int(below[0]) + 1
    s = float(i - 1)
    if interpolate:
        s += (f[i - 1] - threshold) / (f[i - 1] - f[i])
    return shell_resolution_A(s, box, pixel_size_A)


def fsc_true_from_half(fsc_half: Any) -> Any:
    """FSC of the full data set from a half-set FSC: ``sqrt(2 FSC / (1 + FSC))``.

    Negative values are clipped to 0 first (the formula needs ``FSC >= 0``). Host sequences give
    a numpy array; device curves stay on their backend.
    """
    be = backend_of(fsc_half)
    xp = be.xp
    if be.owns(fsc_half):
        f = xp.astype(fsc_half, xp.float64)
    else:
        f = xp.asarray(fsc_half, dtype=xp.float64)
    f = xp.clip(f, 0.0, None)
    return xp.sqrt(2 * f / (1 + f))
