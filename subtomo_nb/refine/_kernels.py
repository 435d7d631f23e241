"""Compiled CPU kernels (numba) for the E-step's memory-bound steps around its matrix products.

Each computes what the array expression named in its docstring computes, element by element in
one pass and without temporaries; the array expressions stay the path for cupy arrays and where
numba is missing. Like :mod:`subtomo_nb.fourier._kernels`, rows are split over threads only when
called from the main thread, and every output element is written by one thread, so results do
not depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from subtomo_nb.fourier._kernels import HAVE_NUMBA, parallel_allowed

if HAVE_NUMBA:
    import numba

__all__ = ["HAVE_NUMBA", "translated_terms_into", "add_rows"]


if HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _translated_row(b, ph, p, t, T, out):  # pragma: no cover - compiled
        K = b.shape[1]
        row = p * T + t
        for k in range(K):
            br = b[p, k].real
            bi = b[p, k].imag
            pr = ph[t, k].real
            pi = ph[t, k].imag
            out[row, k] = br * pr - bi * pi
            out[row, K + k] = br * pi + bi * pr

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _translated(b, ph, out):  # pragma: no cover - compiled
        T = ph.shape[0]
        for i in range(b.shape[0] * T):
            _translated_row(b, ph, i // T, i % T, T, out)

    @numba.njit(cache=True, nogil=True, fastmath=False, parallel=True)
    def _translated_par(b, ph, out):  # pragma: no cover - compiled
        T = ph.shape[0]
        for i in numba.prange(b.shape[0] * T):
            _translated_row(b, ph, i // T, i % T, T, out)

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _add_rows(dst, ids, src):  # pragma: no cover - compiled
        for j in range(ids.shape[0]):
            r = ids[j]
            for k in range(src.shape[1]):
                dst[r, k] += src[j, k]

    @numba.njit(cache=True, nogil=True, fastmath=False, parallel=True)
    def _add_rows_par(dst, ids, src):  # pragma: no cover - compiled
        for j in numba.prange(ids.shape[0]):
            r = ids[j]
            for k in range(src.shape[1]):
                dst[r, k] += src[j, k]


def translated_terms_into(b: np.ndarray, phases: np.ndarray, out: np.ndarray) -> bool:
    """``out[p·T + t] = [Re(b_p φ_t), Im(b_p φ_t)]`` for numpy arrays (the array expression
    ``concatenate([(b φ).real, (b φ).imag])`` with ``b φ`` a complex product of ``b``'s precision).

    Parameters
    ----------
    b
        ``(P, K)`` complex.
    phases
        ``(T, K)`` complex, the precision of ``b``.
    out
        ``(P·T, 2K)`` C-contiguous real array of ``b``'s real precision.

    Returns
    -------
    bool
        False (nothing written) where the compiled kernel cannot be used: the caller then uses
        the array expression.
    """
    if not HAVE_NUMBA or not isinstance(b, np.ndarray) or not isinstance(phases, np.ndarray):
        return False
    if phases.dtype != b.dtype or out.dtype != b.real.dtype or not out.flags.c_contiguous:
        return False
    kernel = _translated_par if parallel_allowed() else _translated
    kernel(np.ascontiguousarray(b), np.ascontiguousarray(phases), out)
    return True


def add_rows(dst: np.ndarray, ids: np.ndarray, src: np.ndarray) -> None:
    """``dst[ids] += src`` for distinct row indices ``ids`` (one read-modify-write pass)."""
    if HAVE_NUMBA and isinstance(dst, np.ndarray) and dst.flags.c_contiguous and src.dtype == dst.dtype:
        kernel = _add_rows_par if parallel_allowed() and len(ids) > 1 else _add_rows
        kernel(dst, np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(src))
    else:
        dst[ids] += src
