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
no Python loops over orientations, particles or voxels.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence

import numpy as np

from subtomo_nb._array import get_xp
from subtomo_nb.fourier._kernels import HAVE_NUMBA, scatter_rotated
from subtomo_nb.fourier.grid import freq_grid, half_points
from subtomo_nb.fourier.projector import padded_size, trilinear_gather_half
from subtomo_nb.fourier.reconstruct import (
    SSNRResult,
    downsampled_average,
    ssnr_tau2_from_fsc,
    wiener_reconstruct,
)

__all__ = ["BackProjector", "trilinear_scatter_half"]

_CORNERS = np.array([[dx, dy, dz] for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)], dtype=np.int64)


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
    ``(data, [real accumulations])``: complex128 ``(n, n, n//2+1)`` (or None) and float64 arrays.
    Corners outside ``0 <= x <= n//2``, ``-n/2 <= y, z < n/2`` are dropped (as RELION).
    """
    xp = get_xp(pos, values)
    shp = pos.shape[:-1]
    p = pos.reshape(-1, 3)
    neg = p[:, 0] < 0
    p = xp.where(neg[:, None], -p, p)
    f0 = xp.floor(p)
    frac = p - f0
    base = f0.astype(xp.int64)
    # the 8 trilinear coefficients, built from the per-axis factors (no (P, 8, 3) temporaries)
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    wx = (1 - fx, fx)
    wy = (1 - fy, fy)
    wz = (1 - fz, fz)
    w = xp.stack([wx[c[0]] * wy[c[1]] * wz[c[2]] for c in _CORNERS], axis=1)  # (P, 8)
    if mask is not None:
        w = w * xp.broadcast_to(xp.asarray(mask), shp).reshape(-1)[:, None].astype(w.dtype)
    corners = xp.asarray(_CORNERS)  # (8, 3)
    gx = base[:, 0:1] + corners[None, :, 0]
    gy = base[:, 1:2] + corners[None, :, 1]
    gz = base[:, 2:3] + corners[None, :, 2]
    nh = n // 2 + 1
    lo, hi = -(n // 2), n - n // 2  # allowed y, z in [lo, hi)
    ok = (gx < nh) & (gy >= lo) & (gy < hi) & (gz >= lo) & (gz < hi)
    w = xp.where(ok, w, 0)
    gx = xp.where(ok, gx, 0)
    gyw, gzw = gy % n, gz % n
    idx = ((gzw * n) + gyw) * nh + gx
    size = n * n * nh
    flat_idx = idx.ravel()
    if mirror_x0:
        sel = xp.nonzero((ok & (gx == 0) & (w != 0)).ravel())[0]
        midx = ((((-gz) % n) * n + ((-gy) % n)) * nh).ravel()[sel]
        all_idx = xp.concatenate([flat_idx, midx])
    else:
        sel = None
        all_idx = flat_idx

    def scatter(wv: Any, conj_mirror: bool) -> Any:
        """bincount of (P, 8) weighted values, plus their mirrored x = 0 copies."""
        flat = wv.ravel()
        if sel is not None:
            extra = flat[sel]
            flat = xp.concatenate([flat, xp.conj(extra) if conj_mirror else extra])
        return flat

    data = None
    if values is not None:
        v = xp.broadcast_to(values, shp).reshape(-1)
        v = xp.where(neg, xp.conj(v), v)
        wv = scatter(w * v[:, None], True)
        re = xp.bincount(all_idx, weights=wv.real.astype(xp.float64), minlength=size)
        im = xp.bincount(all_idx, weights=wv.imag.astype(xp.float64), minlength=size)
        data = (re + 1j * im).reshape(n, n, nh)
    outs = []
    for r in reals:
        rv = xp.broadcast_to(xp.asarray(r), shp).reshape(-1)
        wr = scatter(w * rv[:, None], False).astype(xp.float64)
        outs.append(xp.bincount(all_idx, weights=wr, minlength=size).reshape(n, n, nh))
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
        Real dtype of the accumulators (float64 default; float32 halves memory).
    xp
        Array module for the accumulators (numpy default; pass cupy for GPU).

    Attributes
    ----------
    data, weight
        Padded half arrays ``(M, M, M//2+1)``, complex and real.
    box, pad, padded, r_max, data_dim
        As above; ``pad`` is the effective ``M / N``.
    """

    def __init__(self, box: int, pad: float = 2, r_max: float | None = None, data_dim: int = 3,
                 dtype: Any = np.float64, xp: ModuleType | None = None) -> None:
        xp = np if xp is None else xp
        self.xp = xp
        self.box = int(box)
        self.padded = m = padded_size(self.box, pad)
        self.pad = m / self.box
        self.r_max = float(self.box // 2 if r_max is None else r_max)
        self.data_dim = int(data_dim)
        self.rdtype = np.dtype(dtype).type
        self.cdtype = xp.complex64 if self.rdtype == xp.float32 else xp.complex128
        self.data = xp.zeros((m, m, m // 2 + 1), dtype=self.cdtype)
        self.weight = xp.zeros((m, m, m // 2 + 1), dtype=self.rdtype)

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

        Points with ``|k| > r_max`` are skipped. The reference position is ``pad * A.T k``.
        """
        xp = self.xp
        A = xp.asarray(A, dtype=xp.float64)
        single = A.ndim == 2
        A = A.reshape(-1, 3, 3)
        values = xp.asarray(values)
        if single:
            values = values[None]
        nrot = A.shape[0]
        pts = xp.asarray(points, dtype=xp.float64)
        if single and pts.ndim == values.ndim:
            pts = pts[None]
        shared = pts.ndim == values.ndim  # points (..., 3) shared by all rotations
        shp = (nrot,) + values.shape[1:]
        w = xp.ones(shp) if weights is None else xp.asarray(weights)
        if single and weights is not None and w.ndim == values.ndim:
            w = w[None]
        mk = None
        if mask is not None:
            mk = xp.asarray(mask, dtype=xp.float64)
            if single and mk.ndim == values.ndim:
                mk = mk[None]
        if xp is np and HAVE_NUMBA:
            # compiled single pass (same positions, corners and mirroring; no (R, K, 8) temporaries);
            # the kernel skips points beyond r_max itself, so ``keep`` is only the mask (one row
            # shared by all rotations when there is none)
            flat_pts = pts.reshape(-1, 3) if shared else pts.reshape(nrot, -1, 3)
            K = int(np.prod(values.shape[1:], dtype=np.int64))
            keep = np.ones((1, K)) if mk is None else np.broadcast_to(mk, shp).reshape(nrot, -1)
            d, wt = scatter_rotated(self.padded, A, flat_pts, np.broadcast_to(values, shp).reshape(nrot, -1),
                                    np.broadcast_to(w, shp).reshape(nrot, -1), keep, self.pad, self.r_max)
        else:
            if shared:
                ref = xp.einsum("rji,...j->r...i", A, pts)
                kk = xp.sum(pts * pts, axis=-1)[None]
            else:
                ref = xp.einsum("rji,r...j->r...i", A, pts)
                kk = xp.sum(pts * pts, axis=-1)
            keep = xp.broadcast_to(kk <= self.r_max ** 2, shp).astype(xp.float64)
            if mk is not None:
                keep = keep * xp.broadcast_to(mk, shp)
            d, (wt,) = trilinear_scatter_half(self.padded, ref * self.pad, xp.broadcast_to(values, shp),
                                              [xp.broadcast_to(w, shp)], mask=keep)
        self.data += d.astype(self.cdtype)
        self.weight += wt.astype(self.rdtype)

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

        The redundant half of the ``x = 0`` plane (``ky < 0``, or ``ky = 0`` and ``kz < 0``) is
        skipped so that each Friedel pair is inserted once.
        """
        xp = self.xp
        n = int(data_half.shape[-2])
        k = half_points(n, 3, xp)
        kx, ky, kz = freq_grid(n, 3, xp)
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

        On the ``kx = 0`` column only ``ky >= 0`` is inserted (each Friedel pair once; RELION's
        SPA back-projector inserts the whole column, doubling its weight, which cancels in D/W).
        """
        xp = self.xp
        n = int(data_half.shape[-2])
        k = half_points(n, 2, xp)
        kx, ky = freq_grid(n, 2, xp)
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
            ``(S, 3, 3)`` rotation matrices of the group (any order; for a group the set is
            closed under transposition, so ``R`` vs ``R.T`` conventions agree).
        """
        xp = self.xp
        ops = np.asarray(ops, dtype=np.float64).reshape(-1, 3, 3)
        ops = ops[[not np.allclose(R, np.eye(3), atol=1e-6) for R in ops]]
        if len(ops) == 0:
            return
        m = self.padded
        width = m // 2 + 2
        ext_d = xp.zeros((m, m, width), dtype=self.cdtype)
        ext_d[..., : m // 2 + 1] = self.data
        ext_w = xp.zeros((m, m, width), dtype=self.rdtype)
        ext_w[..., : m // 2 + 1] = self.weight
        fd, fw = ext_d.reshape(-1), ext_w.reshape(-1)
        k = half_points(m, 3, xp, xp.float64)
        r2 = xp.sum(k * k, axis=-1)
        rmax2 = int(round(self.r_max * self.pad)) ** 2
        sel = xp.nonzero((r2 <= rmax2).ravel())[0]
        kin = k.reshape(-1, 3)[sel]
        sum_d = self.data.reshape(-1).copy()
        sum_w = self.weight.reshape(-1).copy()
        # one gather per operator (<= 60 for point groups), vectorised over all voxels
        for R in ops:
            q = kin @ xp.asarray(R.T)
            sum_d[sel] += trilinear_gather_half(fd, m, width, q).astype(self.cdtype)
            sum_w[sel] += trilinear_gather_half(fw, m, width, q).astype(self.rdtype)
        self.data = sum_d.reshape(self.data.shape)
        self.weight = sum_w.reshape(self.weight.shape)

    def add(self, other: "BackProjector") -> None:
        """Add another back-projector's data and weight (same box and padding)."""
        if other.data.shape != self.data.shape:
            raise ValueError("back-projectors have different padded sizes")
        self.data += other.data.astype(self.cdtype)
        self.weight += other.weight.astype(self.rdtype)

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
