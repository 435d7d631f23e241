"""Fourier back-projector: trilinear scatter of data and weights into padded half arrays.

``BackProjector(box, pad=2)`` holds ``data`` (complex) and ``weight`` (real) padded half
transforms ``(M, M, M//2+1)`` in wrapped layout, ``M = round(pad N)`` made even (RELION's
``BackProjector``). A data-frame frequency ``k`` (Fourier pixels of the unpadded box) of an
observation with orientation ``A`` lands at the padded reference position ``pad * A.T k`` and is
splatted onto its 8 neighbours with trilinear weights; points with negative x are mirrored to
``-pos`` and complex-conjugated. Contributions landing on the ``x = 0`` plane are also added,
conjugated, at the mirrored voxel ``(0, -y, -z)``, so the arrays are always Hermitian-consistent
(this is what RELION's ``enforceHermitianSymmetry`` does in ``symmetrise``; here it is done at
insertion, as in RELION's tomography forward insertion).

Scatter is one ``bincount`` per accumulated quantity over all rotations, points and corners --
no Python loops over orientations, particles or voxels -- or, where the backend has it, the
compiled kernel :func:`~subtomo_nb.fourier._kernels.scatter_rotated` (numpy; the strict test
device runs it on its arrays' buffers).

Backends: a back-projector holds its sums on one backend (``backend=``: numpy, cupy or the strict
test device); :meth:`BackProjector.insert` takes arrays of that backend (host numpy on the numpy
backend only), :meth:`BackProjector.symmetrise` takes host operators and uploads them once.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence

import numpy as np

from subtomo_nb._array import as_dtype, backend_for
from subtomo_nb.backend import Backend, backend_of
from subtomo_nb.fourier.grid import freq_grid, half_points
from subtomo_nb.fourier.projector import padded_size, trilinear_gather_half
from subtomo_nb.fourier.reconstruct import (
    SSNRResult,
    downsampled_average,
    ssnr_tau2_from_fsc,
    wiener_reconstruct,
)

__all__ = ["BackProjector", "trilinear_scatter_half"]

_CORNERS = [[dx, dy, dz] for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]


def trilinear_scatter_half(n: int, pos: Any, values: Any, reals: Sequence[Any] = (),
                           mask: Any = None, mirror_x0: bool = True) -> tuple[Any, list[Any]]:
    """Trilinear scatter of complex values (and real companions) into a half-layout grid.

    Parameters
    ----------
    n
        Grid size along y and z; the x axis has ``n//2 + 1`` elements (half layout, wrapped).
    pos
        Positions ``(..., 3)`` as (x, y, z) in grid units. Points with ``x < 0`` are mirrored to
        ``-pos`` with conjugated values.
    values
        Complex values ``(...)`` (or None: no complex accumulation).
    reals
        Real arrays ``(...)`` (broadcastable to ``pos.shape[:-1]``) accumulated with the same
        trilinear coefficients (e.g. weights, multiplicity ones).
    mask
        Optional ``(...)`` boolean/float factor: points with 0 are not inserted.
    mirror_x0
        Also add contributions on the ``x = 0`` plane, conjugated, at ``(0, -y, -z)``.

    Returns
    -------
    ``(data, [real accumulations])``: complex128 ``(n, n, n//2+1)`` (or None) and float64 arrays,
    on the backend of ``pos`` (all inputs must be arrays of one backend).
    Corners outside ``0 <= x <= n//2``, ``-n/2 <= y, z < n/2`` are dropped (as RELION).
    """
    be = backend_of(pos, values)
    xp = be.xp
    shp = tuple(pos.shape[:-1])
    p = xp.reshape(pos, (-1, 3))
    neg = p[:, 0] < 0
    p = xp.where(xp.expand_dims(neg, axis=1), -p, p)
    f0 = xp.floor(p)
    frac = p - f0
    base = xp.astype(f0, xp.int64)
    # the 8 trilinear coefficients, built from the per-axis factors (no (P, 8, 3) temporaries)
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    wx = (1 - fx, fx)
    wy = (1 - fy, fy)
    wz = (1 - fz, fz)
    w = xp.stack([wx[c[0]] * wy[c[1]] * wz[c[2]] for c in _CORNERS], axis=1)  # (P, 8)
    if mask is not None:
        mk = xp.astype(xp.reshape(xp.broadcast_to(mask, shp), (-1,)), w.dtype)
        w = w * xp.expand_dims(mk, axis=1)
    corners = xp.asarray(_CORNERS, dtype=xp.int64, device=be.device)  # (8, 3)
    gx = base[:, 0:1] + xp.reshape(corners[:, 0], (1, -1))
    gy = base[:, 1:2] + xp.reshape(corners[:, 1], (1, -1))
    gz = base[:, 2:3] + xp.reshape(corners[:, 2], (1, -1))
    nh = n // 2 + 1
    lo, hi = -(n // 2), n - n // 2  # allowed y, z in [lo, hi)
    ok = (gx < nh) & (gy >= lo) & (gy < hi) & (gz >= lo) & (gz < hi)
    w = xp.where(ok, w, 0)
    gx = xp.where(ok, gx, 0)
    gyw, gzw = gy % n, gz % n
    idx = ((gzw * n) + gyw) * nh + gx
    size = n * n * nh
    flat_idx = xp.reshape(idx, (-1,))
    if mirror_x0:
        sel = xp.nonzero(xp.reshape(ok & (gx == 0) & (w != 0), (-1,)))[0]
        midx = xp.take(xp.reshape((((-gz) % n) * n + ((-gy) % n)) * nh, (-1,)), sel)
        all_idx = xp.concat([flat_idx, midx])
    else:
        sel = None
        all_idx = flat_idx

    def scatter(wv: Any, conj_mirror: bool) -> Any:
        """(P, 8) weighted values, flat, plus their mirrored x = 0 copies."""
        flat = xp.reshape(wv, (-1,))
        if sel is not None:
            extra = xp.take(flat, sel)
            flat = xp.concat([flat, xp.conj(extra) if conj_mirror else extra])
        return flat

    data = None
    if values is not None:
        v = xp.reshape(xp.broadcast_to(values, shp), (-1,))
        v = xp.where(neg, xp.conj(v), v)
        wv = scatter(w * xp.expand_dims(v, axis=1), True)
        re = be.bincount(all_idx, xp.astype(xp.real(wv), xp.float64), size)
        im = be.bincount(all_idx, xp.astype(xp.imag(wv), xp.float64), size)
        data = xp.reshape(re + 1j * im, (n, n, nh))
    outs = []
    for r in reals:
        rv = xp.reshape(xp.broadcast_to(r, shp), (-1,))
        wr = xp.astype(scatter(w * xp.expand_dims(rv, axis=1), False), xp.float64)
        outs.append(xp.reshape(be.bincount(all_idx, wr, size), (n, n, nh)))
    return data, outs


class BackProjector:
    """Accumulates data and weights on a padded 3D Fourier grid and reconstructs (RELION).

    Parameters
    ----------
    box
        Unpadded box ``N`` (pixels).
    pad
        Padding factor (RELION ``--pad``, default 2).
    r_max
        Largest inserted frequency (Fourier pixels); default ``N // 2``.
    data_dim
        3 for 3D data (subtomograms; values on the :func:`~subtomo_nb.fourier.fft.rfft3` scale),
        2 for 2D images inserted as central slices (values on the ``rfft2`` scale, which is ``N``
        times the 3D scale); only the final normalisation of :meth:`reconstruct` depends on it.
    dtype
        Real dtype of the accumulators (float64 default; float32 halves memory): numpy's or the
        backend's.
    backend
        Backend of the accumulators: a name (``"numpy"``, ``"cupy"``, ``"strict"``), a
        :class:`~subtomo_nb.backend.Backend` or an array module.
    xp
        Array module of the accumulators (older spelling of ``backend``; wins when given).
    kernels
        Use the backend's compiled scatter kernel where it has one (numpy; strict runs it on its
        arrays' buffers); False: the array expressions (:func:`trilinear_scatter_half`), the path
        cupy runs.

    Attributes
    ----------
    backend, xp
        The backend and its array namespace.
    data, weight
        Padded half arrays ``(M, M, M//2+1)``, complex and real, on the backend.
    box, pad, padded, r_max, data_dim
        As above; ``pad`` is the effective ``M / N``.
    rdtype, cdtype
        Real and complex dtypes of the accumulators (the backend's).
    """

    def __init__(self, box: int, pad: float = 2, r_max: float | None = None, data_dim: int = 3,
                 dtype: Any = np.float64, backend: str | Backend | ModuleType = "numpy",
                 xp: ModuleType | None = None, kernels: bool = True) -> None:
        be = backend_for(xp if xp is not None else backend)
        self.backend = be
        self.xp = xp = be.xp
        self.box = int(box)
        self.padded = m = padded_size(self.box, pad)
        self.pad = m / self.box
        self.r_max = float(self.box // 2 if r_max is None else r_max)
        self.data_dim = int(data_dim)
        self.rdtype = as_dtype(be, dtype)
        self.cdtype = xp.complex64 if self.rdtype == xp.float32 else xp.complex128
        self.data = xp.zeros((m, m, m // 2 + 1), dtype=self.cdtype, device=be.device)
        self.weight = xp.zeros((m, m, m // 2 + 1), dtype=self.rdtype, device=be.device)
        self._scatter = be.kernel("scatter_rotated") if kernels else None

    def _input(self, a: Any, dtype: Any, what: str) -> Any:
        """``a`` as an array of the backend (``dtype`` None: its own dtype); host numpy input is
        accepted on the numpy backend only (elsewhere the caller uploads it with ``be.to_device``)."""
        be = self.backend
        if be.owns(a):
            return a if dtype is None else be.xp.astype(a, dtype, copy=False)
        if be.name == "numpy":
            return np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
        raise TypeError(f"BackProjector on the {be.name} backend: {what} must be an array of that backend "
                        f"(be.to_device), not {type(a).__name__}")

    # ------------------------------------------------------------------ insertion
    def insert(self, A: Any, values: Any, weights: Any = None, points: Any = None,
               mask: Any = None) -> None:
        """Trilinear back-projection of values observed at data-frame frequencies.

        Parameters
        ----------
        A
            ``(R, 3, 3)`` (or ``(3, 3)``) orientations, reference -> data frame.
        values
            Complex ``(R, ...)`` values (e.g. ``w CTF X / sigma2``).
        weights
            Real ``(R, ...)`` weights (e.g. ``w CTF**2 / sigma2``); None: ones.
        points
            Data-frame frequencies (x, y, z) in Fourier pixels of the unpadded box: ``(..., 3)``
            shared by all rotations, or ``(R, ..., 3)``. Each Friedel pair should appear once.
        mask
            Optional ``(R, ...)`` or ``(...)`` 0/1 factor of points to insert.

        All arrays belong to the back-projector's backend (host numpy on the numpy backend).
        Points with ``|k| > r_max`` are skipped. The reference position is ``pad * A.T k``.
        """
        be = self.backend
        xp = self.xp
        A = self._input(A, xp.float64, "rotation matrices")
        single = A.ndim == 2
        A = xp.reshape(A, (-1, 3, 3))
        values = self._input(values, None, "values")
        if single:
            values = xp.expand_dims(values, axis=0)
        nrot = int(A.shape[0])
        pts = self._input(points, xp.float64, "points")
        if single and pts.ndim == values.ndim:
            pts = xp.expand_dims(pts, axis=0)
        shared = pts.ndim == values.ndim  # points (..., 3) shared by all rotations
        shp = (nrot,) + tuple(values.shape[1:])
        if weights is None:
            w = xp.ones(shp, dtype=xp.float64, device=be.device)
        else:
            w = self._input(weights, None, "weights")
            if single and w.ndim == values.ndim:
                w = xp.expand_dims(w, axis=0)
        mk = None
        if mask is not None:
            mk = self._input(mask, xp.float64, "mask")
            if single and mk.ndim == values.ndim:
                mk = xp.expand_dims(mk, axis=0)
        if self._scatter is not None:
            # compiled single pass (same positions, corners and mirroring; no (R, K, 8) temporaries);
            # the kernel skips points beyond r_max itself, so ``keep`` is only the mask (one row
            # shared by all rotations when there is none)
            flat_pts = xp.reshape(pts, (-1, 3)) if shared else xp.reshape(pts, (nrot, -1, 3))
            K = int(np.prod(shp[1:], dtype=np.int64))
            if mk is None:
                keep = xp.ones((1, K), dtype=xp.float64, device=be.device)
            else:
                keep = xp.reshape(xp.broadcast_to(mk, shp), (nrot, -1))
            d, wt = self._scatter(self.padded, A, flat_pts, xp.reshape(xp.broadcast_to(values, shp), (nrot, -1)),
                                  xp.reshape(xp.broadcast_to(w, shp), (nrot, -1)), keep, self.pad, self.r_max)
        else:
            if shared:
                flat = xp.reshape(pts, (-1, 3))
                ref = xp.reshape(xp.matmul(xp.expand_dims(flat, axis=0), A), shp + (3,))  # pts @ A_r = A_r.T k
                kk = xp.expand_dims(xp.sum(pts * pts, axis=-1), axis=0)
            else:
                ref = xp.reshape(xp.matmul(xp.reshape(pts, (nrot, -1, 3)), A), shp + (3,))
                kk = xp.sum(pts * pts, axis=-1)
            keep = xp.astype(xp.broadcast_to(kk <= self.r_max ** 2, shp), xp.float64)
            if mk is not None:
                keep = keep * xp.broadcast_to(mk, shp)
            d, (wt,) = trilinear_scatter_half(self.padded, ref * self.pad, xp.broadcast_to(values, shp),
                                              [xp.broadcast_to(w, shp)], mask=keep)
        self.data += xp.astype(d, self.cdtype)
        self.weight += xp.astype(wt, self.rdtype)

    def insert3d(self, A: Any, data_half: Any, weight_half: Any = None) -> None:
        """Back-rotate whole 3D half transforms (RELION's ``backrotate3D``).

        Parameters
        ----------
        A
            ``(R, 3, 3)`` or ``(3, 3)``.
        data_half
            ``(R, n, n, n//2+1)`` (or without R) half transforms of data of box ``n`` (``n <= N``:
            a Fourier-cropped window, frequencies in Fourier pixels of the box ``N``).
        weight_half
            Real ``(R, n, n, n//2+1)`` weights; None: ones.

        Arrays of the back-projector's backend. The redundant half of the ``x = 0`` plane
        (``ky < 0``, or ``ky = 0`` and ``kz < 0``) is skipped so that each Friedel pair is
        inserted once.
        """
        be = self.backend
        n = int(data_half.shape[-2])
        k = half_points(n, 3, be)
        kx, ky, kz = freq_grid(n, 3, be)
        red = (kx == 0) & ((ky < 0) | ((ky == 0) & (kz < 0)))
        self.insert(A, data_half, weight_half, k, mask=~red)

    def insert2d(self, A: Any, data_half: Any, weight_half: Any = None) -> None:
        """Back-project 2D half transforms as central slices (RELION's ``backproject2Dto3D``).

        Parameters
        ----------
        A
            ``(R, 3, 3)`` or ``(3, 3)``.
        data_half
            ``(R, n, n//2+1)`` (or without R) image transforms; 2D pixel ``(kx, ky)`` is the 3D
            data-frame point ``(kx, ky, 0)``.
        weight_half
            Real ``(R, n, n//2+1)`` weights; None: ones.

        Arrays of the back-projector's backend. On the ``kx = 0`` column only ``ky >= 0`` is
        inserted (each Friedel pair once; RELION's SPA back-projector inserts the whole column,
        doubling its weight, which cancels in D/W).
        """
        be = self.backend
        n = int(data_half.shape[-2])
        k = half_points(n, 2, be)
        kx, ky = freq_grid(n, 2, be)
        red = (kx == 0) & (ky < 0)
        self.insert(A, data_half, weight_half, k, mask=~red)

    # ------------------------------------------------------------------ symmetry, sums
    def symmetrise(self, ops: Any) -> None:
        """Apply point-group symmetry to data and weight (RELION's ``applyPointGroupSymmetry``).

        For every operator ``R`` (identity matrices are skipped; the original counts once):
        ``data(k) += data(R k)`` and ``weight(k) += weight(R k)``, trilinear on the padded grid
        (conjugated for negative x), for ``|k_pad| <= round(r_max pad)``. Data and weight are
        summed, not averaged.

        Parameters
        ----------
        ops
            ``(S, 3, 3)`` rotation matrices of the group, host numpy (any order; for a group the
            set is closed under transposition, so ``R`` vs ``R.T`` conventions agree). They are
            uploaded to the backend once per call (``"metadata"``).
        """
        be = self.backend
        xp = self.xp
        ops = np.asarray(ops, dtype=np.float64).reshape(-1, 3, 3)
        ops = ops[[not np.allclose(R, np.eye(3), atol=1e-6) for R in ops]]
        if len(ops) == 0:
            return
        ops_dev = be.to_device(np.ascontiguousarray(ops.transpose(0, 2, 1)), "metadata")  # R.T, once
        m = self.padded
        width = m // 2 + 2
        ext_d = xp.zeros((m, m, width), dtype=self.cdtype, device=be.device)
        ext_d[..., : m // 2 + 1] = self.data
        ext_w = xp.zeros((m, m, width), dtype=self.rdtype, device=be.device)
        ext_w[..., : m // 2 + 1] = self.weight
        fd, fw = xp.reshape(ext_d, (-1,)), xp.reshape(ext_w, (-1,))
        k = half_points(m, 3, be, xp.float64)
        r2 = xp.sum(k * k, axis=-1)
        rmax2 = int(round(self.r_max * self.pad)) ** 2
        sel = xp.nonzero(xp.reshape(r2 <= rmax2, (-1,)))[0]
        kin = xp.take(xp.reshape(k, (-1, 3)), sel, axis=0)
        sum_d = xp.asarray(xp.reshape(self.data, (-1,)), copy=True)
        sum_w = xp.asarray(xp.reshape(self.weight, (-1,)), copy=True)
        # one gather per operator (<= 60 for point groups), vectorised over all voxels
        for i in range(len(ops)):
            q = kin @ ops_dev[i, ...]
            gd = xp.astype(trilinear_gather_half(fd, m, width, q), self.cdtype)
            gw = xp.astype(trilinear_gather_half(fw, m, width, q), self.rdtype)
            if be.name == "numpy":
                sum_d[sel] += gd
                sum_w[sel] += gw
            else:  # distinct indices: a gather, an add and a row write
                be.set_rows(sum_d, sel, xp.take(sum_d, sel) + gd)
                be.set_rows(sum_w, sel, xp.take(sum_w, sel) + gw)
        self.data = xp.reshape(sum_d, tuple(self.data.shape))
        self.weight = xp.reshape(sum_w, tuple(self.weight.shape))

    def add(self, other: "BackProjector") -> None:
        """Add another back-projector's data and weight (same box, padding and backend)."""
        if tuple(other.data.shape) != tuple(self.data.shape):
            raise ValueError("back-projectors have different padded sizes")
        self.data += self.xp.astype(other.data, self.cdtype)
        self.weight += self.xp.astype(other.weight, self.rdtype)

    # ------------------------------------------------------------------ outputs
    def reconstruct(self, tau2: Any = None, tau2_fudge: float = 1.0, skip_gridding: bool = True,
                    minres_map: int = 5, r_max: float | None = None, edge_mask: bool = True,
                    do_gridding_correction: bool = True, gridding_iterations: int = 10) -> Any:
        """Real-space reconstruction, see :func:`~subtomo_nb.fourier.reconstruct.wiener_reconstruct`.

        ``tau2=None`` gives the un-regularised D/W map (RELION's ``_unfil`` half maps).
        Returns a real ``(N, N, N)`` map on the scale of the original volume.
        """
        r = int(self.r_max if r_max is None else r_max)
        return wiener_reconstruct(self.data, self.weight, self.box, self.pad, r, self.data_dim, tau2,
                                  tau2_fudge, minres_map, skip_gridding, gridding_iterations,
                                  edge_mask, do_gridding_correction)

    def unregularised_average(self) -> Any:
        """D/W binned onto the unpadded grid, ``(N, N, N//2+1)``: input of the half-set FSC (§6.8)."""
        return downsampled_average(self.data, self.weight, self.box, self.pad)

    def ssnr_tau2_from_fsc(self, fsc: Any, tau2_fudge: float = 1.0, whole_data: bool = False) -> SSNRResult:
        """tau2, SSNR, sigma2 and Fourier coverage per shell from an FSC (RELION ``updateSSNRarrays``)."""
        return ssnr_tau2_from_fsc(fsc, self.weight, self.box, self.pad, int(self.r_max), tau2_fudge,
                                  whole_data)
