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

__all__ = ["HAVE_NUMBA", "translated_terms_into", "add_rows", "posterior_weights"]


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


    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _weights_particle(d2, lpr, lpt, fraction, max_sig, p, w, best, threshold, n_sig, pmax,
                          log_lik):  # pragma: no cover - compiled
        R, T = d2.shape[1], d2.shape[2]
        pr = p if lpr.shape[0] > 1 else 0
        pt = p if lpt.shape[0] > 1 else 0
        top = -np.inf
        b = 0
        for r in range(R):
            for t in range(T):
                v = -d2[p, r, t] + lpr[pr, r] + lpt[pt, t]
                w[p, r, t] = v
                if v > top:
                    top = v
                    b = r * T + t
        total = 0.0
        for r in range(R):
            for t in range(T):
                e = np.exp(w[p, r, t] - top)
                w[p, r, t] = e
                total += e
        cutoff = (1.0 - fraction) / (R * T)
        n_c = 0
        for r in range(R):
            for t in range(T):
                x = w[p, r, t] / total
                w[p, r, t] = x
                if x >= cutoff:
                    n_c += 1
        if n_c == 0:                  # only with nan weights: all samples are candidates
            n_c = R * T
            cutoff = -np.inf
        cand = np.empty(n_c)
        j = 0
        for r in range(R):
            for t in range(T):
                if w[p, r, t] >= cutoff or cutoff == -np.inf:
                    cand[j] = w[p, r, t]
                    j += 1
        L = n_c if max_sig <= 0 else min(n_c, max_sig)
        if L < n_c:
            cand = np.partition(cand, n_c - L)[n_c - L:]
        srt = np.sort(cand)[::-1]
        cum = 0.0
        n_keep = 0
        for i in range(srt.shape[0]):
            cum += srt[i]
            if cum < fraction:
                n_keep += 1
            else:
                break
        n_keep = min(n_keep + 1, srt.shape[0])
        if max_sig > 0:
            n_keep = min(n_keep, max_sig)
        th = srt[n_keep - 1]
        kept = 0.0
        cnt = 0
        for r in range(R):
            for t in range(T):
                x = w[p, r, t]
                if x >= th:
                    kept += x
                    cnt += 1
                else:
                    w[p, r, t] = 0.0
        mx = 0.0
        for r in range(R):
            for t in range(T):
                x = w[p, r, t] / kept
                w[p, r, t] = x
                if x > mx:
                    mx = x
        best[p] = b
        threshold[p] = th
        n_sig[p] = cnt
        pmax[p] = mx
        log_lik[p] = np.log(total) - d2[p, b // T, b % T]

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _weights(d2, lpr, lpt, fraction, max_sig, w, best, threshold, n_sig, pmax, log_lik):  # pragma: no cover
        for p in range(d2.shape[0]):
            _weights_particle(d2, lpr, lpt, fraction, max_sig, p, w, best, threshold, n_sig, pmax, log_lik)

    @numba.njit(cache=True, nogil=True, fastmath=False, parallel=True)
    def _weights_par(d2, lpr, lpt, fraction, max_sig, w, best, threshold, n_sig, pmax, log_lik):  # pragma: no cover
        for p in numba.prange(d2.shape[0]):   # prange indices are unsigned: as int64 for the index arithmetic
            _weights_particle(d2, lpr, lpt, fraction, max_sig, np.int64(p), w, best, threshold, n_sig, pmax,
                              log_lik)

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


def posterior_weights(diff2: np.ndarray, log_prior_rot: np.ndarray | None, log_prior_trans: np.ndarray | None,
                      adaptive_fraction: float, max_significant: int | None) -> tuple | None:
    """:func:`subtomo_nb.refine.estep.weights_from_diff2` in one compiled pass per particle.

    Each particle's weights are formed, normalised and pruned in place; only its candidates
    (weights of at least ``(1 - fraction) / (R T)``, at most ``max_significant`` of them) are
    sorted. Returns ``(w, pmax, n_significant, log_likelihood, best, threshold)``, or None where
    the kernel does not apply (no numba, non-numpy arrays, or a result that would not be float64):
    the caller then uses the array expression.
    """
    if not HAVE_NUMBA or not isinstance(diff2, np.ndarray) or diff2.ndim != 3:
        return None
    P, R, T = diff2.shape
    if any(a is not None and not isinstance(a, np.ndarray) for a in (log_prior_rot, log_prior_trans)):
        return None
    lpr = np.zeros((1, R)) if log_prior_rot is None else np.atleast_2d(log_prior_rot)   # (1 or P, R)
    lpt = np.zeros((1, T)) if log_prior_trans is None else np.atleast_2d(log_prior_trans)
    arrays = [diff2] + [a for a in (log_prior_rot, log_prior_trans) if a is not None]
    if np.result_type(*arrays) != np.float64 or P == 0 or R * T == 0:
        return None
    w = np.empty((P, R, T))
    best = np.empty(P, dtype=np.int64)
    threshold, pmax, log_lik = np.empty(P), np.empty(P), np.empty(P)
    n_sig = np.empty(P, dtype=np.int64)
    kernel = _weights_par if parallel_allowed() and P > 1 else _weights
    kernel(np.ascontiguousarray(diff2), np.ascontiguousarray(lpr, dtype=np.float64),
           np.ascontiguousarray(lpt, dtype=np.float64), float(adaptive_fraction),
           0 if max_significant is None else int(max_significant), w, best, threshold, n_sig, pmax, log_lik)
    return w, pmax, n_sig, log_lik, best, threshold
