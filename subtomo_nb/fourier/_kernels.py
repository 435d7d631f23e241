"""Compiled CPU kernels (numba) for the two hot loops of refinement: rotated trilinear gather
(:meth:`subtomo_nb.fourier.projector.Projector.sample`) and rotated trilinear scatter
(:meth:`subtomo_nb.fourier.backprojector.BackProjector.insert`).

They compute what the array versions compute — the same positions ``pad · Aᵀ k``, the same
Friedel flip, corner rules and ``x = 0`` mirroring — in one pass per point, with no temporary
arrays of ``rotations × points × 8`` elements. Only the order of floating-point additions differs
(rounding-level differences). The array versions remain the path for cupy arrays and the
reference the tests compare against; these are used for numpy arrays when numba is installed.
Results are reproducible run to run and do not depend on the number of threads: called from the
main thread (a notebook, a serial job) the kernels spread rotations over numba's threads, the
gathers row by row (each output row written by one thread), the scatter in a fixed number of
blocks of rotations with accumulators of their own, summed in block order; called from other
threads (dask workers, sweeps) they run the same blocks on that one thread.
"""

from __future__ import annotations

import threading

import numpy as np

try:  # numba is a core dependency; the array code paths work without it
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "gather_rotated", "gather_rotated_terms", "parallel_allowed", "scatter_rotated"]


def parallel_allowed() -> bool:
    """Whether the compiled kernels may spread one call over threads.

    Only calls from the main thread do: dask workers run tasks in their own threads (one core
    each, already parallel across workers), parameter sweeps run jobs in threads, and numba's
    fallback thread pool does not accept parallel launches from several threads at once.
    """
    return HAVE_NUMBA and threading.current_thread() is threading.main_thread() and numba.get_num_threads() > 1


#: Largest memory (bytes) of the per-block accumulators of one parallel scatter.
SCATTER_BLOCK_BYTES = 64 << 20
#: Most blocks one scatter is split into (fixed, so results do not depend on the thread count).
SCATTER_BLOCKS = 8
#: Fewest rotations per scatter block.
SCATTER_MIN_ROTATIONS = 32


if HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True, fastmath=False, inline="always")
    def _interp(ext, h, m, width, A, r, k0, k1, k2, pad, r_max2):  # pragma: no cover - compiled
        """Trilinear value of the centred extension at ``pad · A[r]ᵀ k`` (0 beyond r_max)."""
        sz = (m + 1) * width
        sy = width
        x = k0 * A[r, 0, 0] + k1 * A[r, 1, 0] + k2 * A[r, 2, 0]
        y = k0 * A[r, 0, 1] + k1 * A[r, 1, 1] + k2 * A[r, 2, 1]
        z = k0 * A[r, 0, 2] + k1 * A[r, 1, 2] + k2 * A[r, 2, 2]
        if x * x + y * y + z * z > r_max2:
            return ext[0] * 0
        x *= pad
        y *= pad
        z *= pad
        neg = x < 0
        if neg:
            x = -x
            y = -y
            z = -z
        fx0 = np.floor(x)
        fy0 = np.floor(y)
        fz0 = np.floor(z)
        fx = x - fx0
        fy = y - fy0
        fz = z - fz0
        x0 = min(int(fx0), width - 2)
        # the periodic index (int(floor) + h) mod m; for |y|, |z| <= h (r_max <= N/2) it lies in
        # [0, m] and only m wraps, so the (slow) modulo is taken only outside [0, m)
        y0 = int(fy0) + h
        if y0 >= m or y0 < 0:
            y0 %= m
        z0 = int(fz0) + h
        if z0 >= m or z0 < 0:
            z0 %= m
        base = (z0 * (m + 1) + y0) * width + x0
        a = ext[base]
        c00 = a + fx * (ext[base + 1] - a)
        a = ext[base + sy]
        c01 = a + fx * (ext[base + sy + 1] - a)
        a = ext[base + sz]
        c10 = a + fx * (ext[base + sz + 1] - a)
        a = ext[base + sz + sy]
        c11 = a + fx * (ext[base + sz + sy + 1] - a)
        c0 = c00 + fy * (c01 - c00)
        c1 = c10 + fy * (c11 - c10)
        v = c0 + fz * (c1 - c0)
        return np.conj(v) if neg else v

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _gather_rotation(ext, m, width, A, r, pts, pad, r_max2, out):  # pragma: no cover - compiled
        h = m // 2
        for k in range(pts.shape[0]):
            out[r, k] = _interp(ext, h, m, width, A, r, pts[k, 0], pts[k, 1], pts[k, 2], pad, r_max2)

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _gather(ext, m, width, A, pts, pad, r_max2, out):  # pragma: no cover - compiled
        for r in range(A.shape[0]):
            _gather_rotation(ext, m, width, A, r, pts, pad, r_max2, out)

    @numba.njit(cache=True, nogil=True, fastmath=False, parallel=True)
    def _gather_par(ext, m, width, A, pts, pad, r_max2, out):  # pragma: no cover - compiled
        for r in numba.prange(A.shape[0]):
            _gather_rotation(ext, m, width, A, r, pts, pad, r_max2, out)

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _gather_terms_rotation(ext, m, width, A, r, pts, pad, r_max2, rows, stacked, power):  # pragma: no cover
        h = m // 2
        K = pts.shape[0]
        row = rows[r]
        for k in range(K):
            v = _interp(ext, h, m, width, A, r, pts[k, 0], pts[k, 1], pts[k, 2], pad, r_max2)
            re = v.real
            im = v.imag
            stacked[row, k] = re
            stacked[row, K + k] = im
            power[row, k] = re * re + im * im

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _gather_terms(ext, m, width, A, pts, pad, r_max2, rows, stacked, power):  # pragma: no cover - compiled
        for r in range(A.shape[0]):
            _gather_terms_rotation(ext, m, width, A, r, pts, pad, r_max2, rows, stacked, power)

    @numba.njit(cache=True, nogil=True, fastmath=False, parallel=True)
    def _gather_terms_par(ext, m, width, A, pts, pad, r_max2, rows, stacked, power):  # pragma: no cover
        for r in numba.prange(A.shape[0]):
            _gather_terms_rotation(ext, m, width, A, r, pts, pad, r_max2, rows, stacked, power)

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _scatter_range(A, pts, shared, values, weights, keep, pad, r_max2, n, mirror_x0,
                       r_start, r_stop, acc):  # pragma: no cover - compiled
        """Rotations ``r_start .. r_stop-1`` into ``acc`` ``(voxels, 3)``: (Re, Im, weight) side by
        side, so each corner is one cache line."""
        nh = n // 2 + 1
        lo = -(n // 2)
        hi = n - n // 2
        K = values.shape[1]
        one_keep = keep.shape[0] == 1
        for r in range(r_start, r_stop):
            kr = 0 if one_keep else r
            for k in range(K):
                kp = keep[kr, k]
                if kp == 0.0:
                    continue
                if shared:
                    k0 = pts[0, k, 0]
                    k1 = pts[0, k, 1]
                    k2 = pts[0, k, 2]
                else:
                    k0 = pts[r, k, 0]
                    k1 = pts[r, k, 1]
                    k2 = pts[r, k, 2]
                if k0 * k0 + k1 * k1 + k2 * k2 > r_max2:
                    continue
                x = (A[r, 0, 0] * k0 + A[r, 1, 0] * k1 + A[r, 2, 0] * k2) * pad
                y = (A[r, 0, 1] * k0 + A[r, 1, 1] * k1 + A[r, 2, 1] * k2) * pad
                z = (A[r, 0, 2] * k0 + A[r, 1, 2] * k1 + A[r, 2, 2] * k2) * pad
                v = values[r, k]
                vr = np.float64(v.real)
                vi = np.float64(v.imag)
                if x < 0:
                    x = -x
                    y = -y
                    z = -z
                    vi = -vi
                w = np.float64(weights[r, k])
                fx0 = np.floor(x)
                fy0 = np.floor(y)
                fz0 = np.floor(z)
                fx = x - fx0
                fy = y - fy0
                fz = z - fz0
                bx = int(fx0)
                by = int(fy0)
                bz = int(fz0)
                for dz in range(2):
                    gz = bz + dz
                    if gz < lo or gz >= hi:
                        continue
                    cz = fz if dz == 1 else 1.0 - fz
                    for dy in range(2):
                        gy = by + dy
                        if gy < lo or gy >= hi:
                            continue
                        cy = fy if dy == 1 else 1.0 - fy
                        for dx in range(2):
                            gx = bx + dx
                            if gx >= nh:
                                continue
                            cx = fx if dx == 1 else 1.0 - fx
                            c = cx * cy * cz * kp
                            idx = ((gz + n if gz < 0 else gz) * n + (gy + n if gy < 0 else gy)) * nh + gx
                            acc[idx, 0] += c * vr
                            acc[idx, 1] += c * vi
                            acc[idx, 2] += c * w
                            if mirror_x0 and gx == 0 and c != 0.0:
                                midx = (((-gz) % n) * n + ((-gy) % n)) * nh
                                acc[midx, 0] += c * vr
                                acc[midx, 1] -= c * vi
                                acc[midx, 2] += c * w

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _scatter(A, pts, shared, values, weights, keep, pad, r_max2, n, mirror_x0,
                 acc):  # pragma: no cover - compiled
        """Blocks ``b`` of rotations (into ``acc[b]``), one after the other."""
        B = acc.shape[0]
        R = A.shape[0]
        for b in range(B):
            _scatter_range(A, pts, shared, values, weights, keep, pad, r_max2, n, mirror_x0,
                           b * R // B, (b + 1) * R // B, acc[b])

    @numba.njit(cache=True, nogil=True, fastmath=False, parallel=True)
    def _scatter_par(A, pts, shared, values, weights, keep, pad, r_max2, n, mirror_x0,
                     acc):  # pragma: no cover - compiled
        """As :func:`_scatter`, the blocks on parallel threads (each into its own accumulators)."""
        B = acc.shape[0]
        R = A.shape[0]
        for b in numba.prange(B):
            _scatter_range(A, pts, shared, values, weights, keep, pad, r_max2, n, mirror_x0,
                           b * R // B, (b + 1) * R // B, acc[b])


def gather_rotated(ext_flat: np.ndarray, m: int, width: int, A: np.ndarray, points: np.ndarray,
                   pad: float, r_max: float, cdtype: type) -> np.ndarray:
    """``F(pad · Aᵀ k)`` by trilinear interpolation on a centred extension, zero beyond ``r_max``.

    Parameters
    ----------
    ext_flat
        Flattened ``(m+1, m+1, width)`` centred extension of the padded half transform.
    m, width
        Padded size and stored x width.
    A
        ``(R, 3, 3)`` rotations (reference -> particle).
    points
        ``(K, 3)`` particle-frame frequencies (Fourier pixels of the unpadded box).
    pad
        Padding factor (padded grid units per Fourier pixel).
    r_max
        Largest frequency sampled (Fourier pixels, unpadded); beyond it the value is 0.
    cdtype
        Output complex dtype.

    Returns
    -------
    numpy.ndarray
        ``(R, K)`` complex values.
    """
    rdt = np.float32 if np.dtype(cdtype) == np.complex64 else np.float64
    out = np.empty((A.shape[0], points.shape[0]), dtype=cdtype)
    kernel = _gather_par if parallel_allowed() and A.shape[0] > 1 else _gather
    kernel(np.ascontiguousarray(ext_flat), int(m), int(width), np.ascontiguousarray(A, dtype=rdt),
           np.ascontiguousarray(points, dtype=rdt), rdt(pad), rdt(r_max) ** 2, out)
    return out


def gather_rotated_terms(ext_flat: np.ndarray, m: int, width: int, A: np.ndarray, points: np.ndarray,
                         pad: float, r_max: float, rows: np.ndarray, stacked: np.ndarray,
                         power: np.ndarray) -> None:
    """:func:`gather_rotated` written straight into the E-step's row layout.

    Row ``rows[r]`` of ``stacked`` ``(n, 2K)`` receives ``[Re V_r, Im V_r]`` and the same row of
    ``power`` ``(n, K)`` receives ``|V_r|²`` (the values :func:`gather_rotated` returns, in one
    pass, with no complex temporary). ``stacked`` and ``power`` are real arrays of the precision
    ``ext_flat`` is stored in (complex64 -> float32); C-contiguous rows.
    """
    rdt = stacked.dtype.type
    if power.dtype != stacked.dtype or not (stacked.flags.c_contiguous and power.flags.c_contiguous):
        raise ValueError("stacked and power must be C-contiguous arrays of one real dtype")
    kernel = _gather_terms_par if parallel_allowed() and A.shape[0] > 1 else _gather_terms
    kernel(np.ascontiguousarray(ext_flat), int(m), int(width), np.ascontiguousarray(A, dtype=rdt),
           np.ascontiguousarray(points, dtype=rdt), rdt(pad), rdt(r_max) ** 2,
           np.ascontiguousarray(rows, dtype=np.int64), stacked, power)


def scatter_rotated(n: int, A: np.ndarray, points: np.ndarray, values: np.ndarray, weights: np.ndarray,
                    keep: np.ndarray, pad: float, r_max: float, mirror_x0: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear scatter of ``values`` and ``weights`` at ``pad · Aᵀ k`` into a half-layout grid.

    The compiled counterpart of :func:`subtomo_nb.fourier.backprojector.trilinear_scatter_half`
    applied to rotated points (float64 accumulation).

    Parameters
    ----------
    n
        Padded grid size (y, z); the x axis has ``n//2 + 1`` elements.
    A
        ``(R, 3, 3)`` rotations.
    points
        ``(K, 3)`` shared or ``(R, K, 3)`` per-rotation frequencies (unpadded Fourier pixels).
    values, weights
        ``(R, K)`` complex values and real weights.
    keep
        ``(R, K)`` or ``(1, K)`` (shared by all rotations) 0/1 (or fractional) insertion factors.
    pad
        Padding factor.
    r_max
        Points with ``|k| > r_max`` are skipped.
    mirror_x0
        Also add contributions on the ``x = 0`` plane, conjugated, at ``(0, -y, -z)``.

    Returns
    -------
    (data, weight)
        complex128 and float64 ``(n, n, n//2+1)`` accumulations.
    """
    nh = n // 2 + 1
    size = n * n * nh
    R = A.shape[0]
    # rotations in a fixed number of blocks, each into its own accumulators, summed in order:
    # the same result whether the blocks run on one thread or several
    blocks = max(1, min(SCATTER_BLOCKS, R // SCATTER_MIN_ROTATIONS, SCATTER_BLOCK_BYTES // (24 * size)))
    acc = np.zeros((blocks, size, 3))
    pts = np.asarray(points, dtype=np.float64)
    shared = pts.ndim == 2
    pts3 = np.ascontiguousarray(pts[None] if shared else pts)
    # values and weights keep their own precision (complex64/float32 are read as they are, the
    # accumulation is float64 either way); no converted copies of these large arrays
    values = np.ascontiguousarray(values)
    if values.dtype not in (np.complex64, np.complex128):
        values = values.astype(np.complex128)
    weights = np.ascontiguousarray(weights)
    if weights.dtype not in (np.float32, np.float64):
        weights = weights.astype(np.float64)
    keep = np.ascontiguousarray(keep, dtype=np.float64)
    if keep.ndim != 2 or keep.shape[0] not in (1, R):
        raise ValueError(f"keep must be (1, K) or (R, K), got {keep.shape}")
    kernel = _scatter_par if blocks > 1 and parallel_allowed() else _scatter
    kernel(np.ascontiguousarray(A, dtype=np.float64), pts3, shared, values, weights, keep, float(pad),
           float(r_max) ** 2, int(n), bool(mirror_x0), acc)
    acc = acc.sum(axis=0) if blocks > 1 else acc[0]
    return (acc[:, 0] + 1j * acc[:, 1]).reshape(n, n, nh), acc[:, 2].reshape(n, n, nh)
