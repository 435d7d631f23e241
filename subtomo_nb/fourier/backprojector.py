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

Scatter is the compiled kernel :func:`~subtomo_nb.fourier._kernels.scatter_rotated` where the
backend has it (numpy), else array expressions (cupy, the strict test device, ``kernels=False``):
rotations and points in chunks of :data:`SCATTER_CHUNK_POINTS`, one ``be.scatter_add`` per
trilinear corner and accumulated part straight into the sums -- no Python loops over
orientations, particles or voxels, and no temporaries that grow with the call.

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

__all__ = ["SCATTER_CHUNK_POINTS", "BackProjector", "trilinear_scatter_half"]

#: Points (rotation × frequency pairs) one chunk of the array-path scatter handles: bounds its
#: temporaries (positions, one corner's coefficients, indices and products: about 300 bytes a
#: point, ~80 MB) whatever the number of rotations and points of the call.
SCATTER_CHUNK_POINTS = 1 << 18


def _scatter_points(be: Backend, n: int, pos: Any, factor: Any, parts: Sequence[Any], targets: Sequence[Any],
                    conj: Sequence[bool], mirror_x0: bool) -> None:
    """Trilinear scatter of real ``parts`` at ``pos`` into the flat real ``targets``, in place.

    The arithmetic of :func:`~subtomo_nb.fourier._kernels.scatter_rotated`: float64 positions and
    coefficients ``cx cy cz factor``, float64 products ``c v``; each product is cast to its target's
    dtype and added with ``be.scatter_add`` (one call per corner and part).

    Parameters
    ----------
    be
        Backend of all arrays.
    n
        Padded grid size (y, z); x has ``n//2 + 1`` elements; targets are ``(n * n * (n//2+1),)``.
    pos
        ``(P, 3)`` float64 positions (x, y, z), grid units; ``x < 0`` is mirrored to ``-pos``.
    factor
        ``(P,)`` float64 insertion factors (the mask), or None.
    parts
        ``(P,)`` real arrays (any real dtype), or None for ones.
    targets
        Flat real accumulators, one per part.
    conj
        Per part: True for an imaginary part, negated for mirrored points and on the mirrored
        ``x = 0`` copy.
    mirror_x0
        Also add contributions on the ``x = 0`` plane, conjugated, at ``(0, -y, -z)``.
    """
    xp = be.xp
    neg = pos[:, 0] < 0
    p = xp.where(xp.expand_dims(neg, axis=1), -pos, pos)
    f0 = xp.floor(p)
    frac = p - f0
    base = xp.astype(f0, xp.int64)
    parts = [v if v is None or not cj else xp.where(neg, -v, v) for v, cj in zip(parts, conj)]
    nh = n // 2 + 1
    lo, hi = -(n // 2), n - n // 2  # allowed y, z in [lo, hi)
    for dz in (0, 1):
        gz = base[:, 2] + dz
        okz = (gz >= lo) & (gz < hi)
        cz = frac[:, 2] if dz else 1.0 - frac[:, 2]
        for dy in (0, 1):
            gy = base[:, 1] + dy
            oky = okz & (gy >= lo) & (gy < hi)
            cy = frac[:, 1] if dy else 1.0 - frac[:, 1]
            row = ((gz % n) * n + (gy % n)) * nh
            for dx in (0, 1):  # x >= 0 after mirroring: gx == 0 only for dx == 0
                gx = base[:, 0] + dx
                ok = oky & (gx < nh)
                c = (frac[:, 0] if dx else 1.0 - frac[:, 0]) * cy * cz
                if factor is not None:
                    c = c * factor
                c = xp.where(ok, c, 0.0)
                idx = xp.where(ok, row + gx, 0)
                for v, t in zip(parts, targets):
                    be.scatter_add(t, idx, xp.astype(c if v is None else c * v, t.dtype))
                if mirror_x0 and dx == 0:
                    sel = xp.nonzero(ok & (gx == 0) & (c != 0))[0]
                    if int(sel.shape[0]) == 0:
                        continue
                    midx = xp.take((((-gz) % n) * n + ((-gy) % n)) * nh, sel)
                    cs = xp.take(c, sel)
                    for v, t, cj in zip(parts, targets, conj):
                        pv = cs if v is None else cs * xp.take(v, sel)
                        be.scatter_add(t, midx, xp.astype(-pv if cj else pv, t.dtype))


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
    The points are scattered in chunks of :data:`SCATTER_CHUNK_POINTS` (float64 arithmetic, as
    the compiled kernel), so the temporaries do not grow with the number of points.
    """
    be = backend_of(pos, values)
    xp = be.xp
    shp = tuple(pos.shape[:-1])
    p = xp.astype(xp.reshape(pos, (-1, 3)), xp.float64)
    npts = int(p.shape[0])

    def flat(a: Any) -> Any:
        return xp.reshape(xp.broadcast_to(a, shp), (-1,))

    mk = None if mask is None else xp.astype(flat(mask), xp.float64)
    v = None if values is None else flat(values)
    rs = [flat(r) for r in reals]
    nh = n // 2 + 1
    size = n * n * nh
    targets = [xp.zeros((size,), dtype=xp.float64, device=be.device)
               for _ in range(len(rs) + (0 if v is None else 2))]
    for s0 in range(0, npts, SCATTER_CHUNK_POINTS):
        s = slice(s0, min(npts, s0 + SCATTER_CHUNK_POINTS))
        pc, fc = p[s, :], None
        parts, conj = [], []
        if v is not None:
            parts += [xp.real(v[s]), xp.imag(v[s])] if xp.isdtype(v.dtype, "complex floating") else [v[s], None]
            conj += [False, True]
        parts += [r[s] for r in rs]
        conj += [False] * len(rs)
        if mk is not None:
            sel = xp.nonzero(mk[s] != 0)[0]
            if int(sel.shape[0]) == 0:
                continue
            pc, fc = xp.take(pc, sel, axis=0), xp.take(mk[s], sel)
            parts = [q if q is None else xp.take(q, sel) for q in parts]
        if v is not None and parts[1] is None:  # real values: no imaginary part to scatter
            _scatter_points(be, n, pc, fc, parts[:1] + parts[2:], targets[:1] + targets[2:],
                            conj[:1] + conj[2:], mirror_x0)
        else:
            _scatter_points(be, n, pc, fc, parts, targets, conj, mirror_x0)
    grids = [xp.reshape(t, (n, n, nh)) for t in targets]
    if v is None:
        return None, grids
    return grids[0] + 1j * grids[1], grids[2:]


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
        Use the backend's compiled scatter kernel where it has one (numpy); False: the array
        expressions, the path cupy and the strict test device run.

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
        self._pending: tuple[Any, Any] | None = None
        self.data = xp.zeros((m, m, m // 2 + 1), dtype=self.cdtype, device=be.device)
        self.weight = xp.zeros((m, m, m // 2 + 1), dtype=self.rdtype, device=be.device)
        self._scatter = be.kernel("scatter_rotated") if kernels else None

    @property
    def data(self) -> Any:
        """Complex padded half array ``(M, M, M//2+1)``: the array-path inserts' pending real and
        imaginary sums are added to it first (once, on the first read after them)."""
        if self._pending is not None:
            xp = self.xp
            re, im = self._pending
            self._pending = None
            shape = tuple(self._data.shape)
            # complex64 + 1j * float32 stays complex64 (Python scalars are weak)
            self._data += xp.reshape(re, shape) + 1j * xp.reshape(im, shape)
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value
        self._pending = None

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
        w = None  # ones
        if weights is not None:
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
            if w is None:
                w = xp.ones(shp, dtype=xp.float64, device=be.device)
            d, wt = self._scatter(self.padded, A, flat_pts, xp.reshape(xp.broadcast_to(values, shp), (nrot, -1)),
                                  xp.reshape(xp.broadcast_to(w, shp), (nrot, -1)), keep, self.pad, self.r_max)
            self.data += xp.astype(d, self.cdtype)
            self.weight += xp.astype(wt, self.rdtype)
        else:
            self._insert_arrays(A, values, w, pts, mk, shared, shp)

    def _insert_arrays(self, A: Any, values: Any, weights: Any, pts: Any, mk: Any, shared: bool,
                       shp: tuple[int, ...]) -> None:
        """The array path of :meth:`insert` (cupy, strict, ``kernels=False``): rotations and points
        in chunks of :data:`SCATTER_CHUNK_POINTS`, scattered with ``be.scatter_add`` straight into
        the weight and into pending real and imaginary sums of the data (cupy has no documented
        complex atomic add), added to :attr:`data` when it is next read. Same float64 arithmetic
        per point as the compiled kernel; the sums accumulate in the back-projector's precision."""
        be = self.backend
        xp = self.xp
        nrot = shp[0]
        K = 1
        for s in shp[1:]:
            K *= int(s)
        m = self.padded
        size = m * m * (m // 2 + 1)
        if self._pending is None:
            self._pending = (xp.zeros((size,), dtype=self.rdtype, device=be.device),
                             xp.zeros((size,), dtype=self.rdtype, device=be.device))
        wshape = tuple(self.weight.shape)
        wflat = xp.reshape(self.weight, (-1,))
        targets = [self._pending[0], self._pending[1], wflat]
        vals = xp.reshape(xp.broadcast_to(values, shp), (nrot, K))
        cplx = xp.isdtype(vals.dtype, "complex floating")
        wts = None if weights is None else xp.reshape(xp.broadcast_to(weights, shp), (nrot, K))
        fac = None if mk is None else xp.reshape(xp.broadcast_to(mk, shp), (nrot, K))
        pts = xp.reshape(pts, (K, 3)) if shared else xp.reshape(pts, (nrot, K, 3))
        r2max = self.r_max ** 2
        rows = max(1, SCATTER_CHUNK_POINTS // K)
        kstep = min(K, SCATTER_CHUNK_POINTS)
        for r0 in range(0, nrot, rows):
            r1 = min(nrot, r0 + rows)
            Ab = A[r0:r1, ...]
            for k0 in range(0, K, kstep):
                k1 = min(K, k0 + kstep)
                if shared:
                    pb = pts[k0:k1, :]
                    ref = xp.matmul(xp.expand_dims(pb, axis=0), Ab)  # pts @ A_r = A_r.T k
                    keep = xp.broadcast_to(xp.expand_dims(xp.sum(pb * pb, axis=-1) <= r2max, axis=0),
                                           (r1 - r0, k1 - k0))
                else:
                    pb = pts[r0:r1, k0:k1, :]
                    ref = xp.matmul(pb, Ab)
                    keep = xp.sum(pb * pb, axis=-1) <= r2max
                fb = None if fac is None else fac[r0:r1, k0:k1]
                if fb is not None:
                    keep = keep & (fb != 0)
                sel = xp.nonzero(xp.reshape(keep, (-1,)))[0]  # only inserted points are scattered
                if int(sel.shape[0]) == 0:
                    continue
                pos = xp.take(xp.reshape(ref, (-1, 3)), sel, axis=0) * self.pad
                v = xp.take(xp.reshape(vals[r0:r1, k0:k1], (-1,)), sel)
                wv = None if wts is None else xp.take(xp.reshape(wts[r0:r1, k0:k1], (-1,)), sel)
                fv = None if fb is None else xp.take(xp.reshape(fb, (-1,)), sel)
                if cplx:
                    _scatter_points(be, m, pos, fv, [xp.real(v), xp.imag(v), wv], targets,
                                    [False, True, False], True)
                else:
                    _scatter_points(be, m, pos, fv, [v, wv], [targets[0], targets[2]], [False, False], True)
        # reshape gives a view of the weight on numpy, cupy and strict; rebinding keeps the sums
        # right on a namespace where it copies
        self.weight = xp.reshape(wflat, wshape)

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
