"""Fourier-space projector: trilinear sampling of a padded reference transform (RELION).

``Projector(volume, pad=2)`` follows RELION's ``Projector::computeFourierTransformMap``:

1. gridding pre-correction: the real-space map is divided by ``sinc(r / (pad N))**2``
   (``sinc(x) = sin(pi x)/(pi x)``, ``r`` = distance to the box centre in pixels), the Fourier
   transform of the trilinear interpolation kernel (skipped with ``skip_gridding=True``);
2. zero padding to ``M = round(pad N)`` (made even; the effective ``pad`` is ``M / N``),
   centred (voxel ``N//2`` goes to ``M//2``);
3. ``rfft3`` (divided by ``M**3``), multiplied by ``pad**3``;
4. zeroed beyond the padded radius ``round(r_max pad)``.

Scale: step 3 makes the padded transform at padded pixel ``pad k`` equal (up to interpolation
and gridding) the unpadded ``rfft3(volume)`` at ``k``. Hence

* ``interpolate(k)`` and ``rotate3d`` are on the scale of :func:`~subtomo_nb.fourier.fft.rfft3`:
  ``rotate3d(identity, N) ~= rfft3(volume)``;
* ``slice2d`` is multiplied by the box size ``N`` (RELION's ``pad**3 * N`` for 3D references and
  2D data), so that ``slice2d(A, N) ~= rfft2(sum_z V_rot)`` with ``V_rot(r) = V(A.T r)``, i.e.
  the Fourier transform of the real-space projection along z of the rotated map.

Sampling follows ``Projector::project``/``rotate3D``: a particle-frame frequency ``k`` reads
the reference at ``A.T k`` (``F_particle(k) = F_ref(A.T k)``), trilinear on the padded half
grid, complex-conjugated (Friedel) where the x coordinate is negative, zero beyond ``r_max``.

The hot path of the E-step is :meth:`Projector.sample`: ``R`` rotations times ``K`` Fourier
points in one batched gather (no Python loops over rotations or points).

Backends: the projector lives on its volume's backend (numpy, cupy or the strict test device,
:func:`~subtomo_nb.backend.backend_of`); its padded transform, centred extension and power
spectrum are that backend's arrays, and every method takes and returns them. Rotation matrices,
points and rows passed to the methods must be arrays of that backend (upload host tables once
with ``be.to_device(a, "metadata")``); host numpy arrays are accepted on the numpy backend only.
Where the backend has the compiled kernels (numpy; strict runs them on its arrays' buffers)
:meth:`Projector.sample` and :meth:`Projector.sample_terms` use them, otherwise (cupy) the array
expressions (:func:`trilinear_gather_centred`), which give the same numbers up to rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subtomo_nb._array import as_dtype, backend_for
from subtomo_nb.backend import backend_of
from subtomo_nb.fourier.fft import rfft3
from subtomo_nb.fourier.grid import freq_grid, half_points, round_half_away
from subtomo_nb.fourier.masks import centred_radius

__all__ = ["Projector", "padded_size", "gridding_sinc2", "trilinear_gather_half", "centred_extension",
           "trilinear_gather_centred"]


def padded_size(box: int, pad: float) -> int:
    """RELION's padded box: ``round(pad * box)`` made even (``padoridim``)."""
    m = int(round(pad * box))
    return m + (m % 2)


def gridding_sinc2(box: int, padded: int, ndim: int = 3, xp: Any = np, dtype: Any = np.float64,
                   device: Any = None) -> Any:
    """``sinc(r / padded)**2`` on a centred box (the FT of the trilinear kernel).

    Parameters
    ----------
    box
        Real-space box size ``N``; the origin is voxel ``N//2`` (pixels).
    padded
        Padded box size ``pad * N`` (pixels).
    ndim
        2 or 3.
    xp
        Array module, backend or backend name of the result (see
        :func:`~subtomo_nb._array.backend_for`).
    dtype
        Real dtype (numpy's or the backend's).
    device
        Device of the result (default the backend's).
    """
    be = backend_for(xp)
    X = be.xp
    dtype = as_dtype(be, dtype)
    r = centred_radius((box,) * ndim, dtype=dtype, backend=be, device=device)
    # numpy.sinc, written out (same operations): pi x, with the machine epsilon at x = 0
    y = np.pi * (r / padded)
    y = X.where(y != 0, y, X.finfo(dtype).eps)
    s = X.sin(y) / y
    return s * s


def _index_dtype(xp: Any, size: int) -> Any:
    """int32 indices where the flat array allows it (half the memory traffic of int64)."""
    return xp.int32 if size < 2 ** 31 - 1 else xp.int64


def _lerp_(a: Any, b: Any, f: Any, xp: Any, inplace: bool) -> Any:
    """``a + f * (b - a)`` in the dtype of ``b``, computed in place in ``b`` on numpy.

    Elsewhere the same operations with the same roundings: ``(b - a) * f`` in the wider of the
    two dtypes, rounded to ``b``'s dtype (as numpy's ``out=b`` casts it), then ``+ a``.
    """
    if inplace:
        np.subtract(b, a, out=b)
        np.multiply(b, f, out=b)
        np.add(b, a, out=b)
        return b
    d = b - a
    return a + xp.astype(d * f, d.dtype, copy=False)


def _conj_where(out: Any, neg: Any, xp: Any, inplace: bool) -> Any:
    """Complex-conjugate ``out`` where ``neg`` (in place on numpy)."""
    if not xp.isdtype(out.dtype, "complex floating"):
        return out
    if inplace:
        np.conjugate(out, out=out, where=neg)
        return out
    return xp.where(neg, xp.conj(out), out)


def _friedel_split(x: Any, y: Any, z: Any, xp: Any, inplace: bool) -> tuple[Any, Any, Any, Any]:
    """Map points with ``x < 0`` to ``-k``; return ``(neg, x, y, z)`` (new arrays)."""
    neg = x < 0
    if inplace:
        x = np.negative(x, where=neg, out=x.copy())
        y = np.negative(y, where=neg, out=y.copy())
        z = np.negative(z, where=neg, out=z.copy())
        return neg, x, y, z
    return neg, xp.where(neg, -x, x), xp.where(neg, -y, y), xp.where(neg, -z, z)


def _floor_frac(c: Any, xp: Any, idt: Any, inplace: bool) -> tuple[Any, Any]:
    """Integer floor (``idt``) and fractional part ``c - floor(c)`` of a coordinate array."""
    f0 = xp.floor(c)
    i0 = xp.astype(f0, idt)
    if inplace:
        np.subtract(c, f0, out=f0)
        return i0, f0
    return i0, c - f0


def trilinear_gather_half(flat: Any, m: int, width: int, pos: Any) -> Any:
    """Trilinear interpolation of a padded half array at (padded) positions.

    Parameters
    ----------
    flat
        Flattened array of shape ``(m, m, width)`` ``[z, y, x]`` in wrapped (FFT) layout along
        z and y; ``width`` must exceed the largest ``x`` sampled by one (pad a zero column).
    m
        Size of the y and z axes.
    width
        Size of the x axis of ``flat``.
    pos
        Positions ``(..., 3)`` as (x, y, z) in grid units (an array of ``flat``'s backend);
        points with negative x are read at ``-pos`` and complex-conjugated (Friedel symmetry of
        real maps). The caller zeroes points outside the stored radius.

    Returns
    -------
    Interpolated values ``(...)`` with the dtype of ``flat``.

    Notes
    -----
    Interpolates along x, then y, then z (``a + f (b - a)``), with 32-bit indices where the
    array allows it and in-place arithmetic on numpy; :class:`Projector` uses a faster variant
    on a centred, periodically extended copy (:func:`trilinear_gather_centred`) with identical
    results.
    """
    be = backend_of(flat, pos)
    xp = be.xp
    inplace = be.name == "numpy"
    shape = tuple(pos.shape[:-1])
    idt = _index_dtype(xp, int(flat.shape[0]))
    neg, x, y, z = _friedel_split(xp.reshape(pos[..., 0], (-1,)), xp.reshape(pos[..., 1], (-1,)),
                                  xp.reshape(pos[..., 2], (-1,)), xp, inplace)
    x0, fx = _floor_frac(x, xp, idt, inplace)
    y0, fy = _floor_frac(y, xp, idt, inplace)
    z0, fz = _floor_frac(z, xp, idt, inplace)
    y0w, y1w = y0 % m, (y0 + 1) % m
    z0w, z1w = z0 % m, (z0 + 1) % m
    z0w *= m
    z1w *= m

    def lerp_x(zr: Any, yr: Any) -> Any:
        row = (zr + yr) * width + x0
        a = xp.take(flat, row)
        row += 1
        return _lerp_(a, xp.take(flat, row), fx, xp, inplace)

    c00 = lerp_x(z0w, y0w)
    c01 = lerp_x(z0w, y1w)
    c10 = lerp_x(z1w, y0w)
    c11 = lerp_x(z1w, y1w)
    c0 = _lerp_(c00, c01, fy, xp, inplace)
    c1 = _lerp_(c10, c11, fy, xp, inplace)
    out = _lerp_(c0, c1, fz, xp, inplace)
    return xp.reshape(_conj_where(out, neg, xp, inplace), shape)


def centred_extension(half: Any, width: int | None = None) -> Any:
    """Centred, periodically extended copy of a wrapped half array (for fast gathers).

    Parameters
    ----------
    half
        Half array ``(m, m, m//2+1)`` ``[z, y, x]`` in wrapped (FFT) layout (padded pixels),
        of any backend (the result is on the same one).
    width
        Size of the x axis of the result (default ``m//2 + 2``: one zero column for the
        ``x0 + 1`` neighbour).

    Returns
    -------
    ``(m+1, m+1, width)`` array ``E`` with ``E[i, j, x] = half[(i - m//2) % m, (j - m//2) % m, x]``
    (zero beyond ``half``'s x range): frequency ``(x, y, z)`` is at ``[z + m//2, y + m//2, x]``
    for ``-m//2 <= y, z <= m//2``, so the eight trilinear corners of any point lie at fixed
    offsets from one base index.
    """
    be = backend_of(half)
    xp = be.xp
    m = int(half.shape[0])
    width = m // 2 + 2 if width is None else int(width)
    idx = (xp.arange(m + 1, dtype=xp.int64, device=be.device) - m // 2) % m
    ext = xp.zeros((m + 1, m + 1, width), dtype=half.dtype, device=be.device)
    ext[..., : int(half.shape[-1])] = xp.take(xp.take(half, idx, axis=0), idx, axis=1)
    return ext


def trilinear_gather_centred(ext_flat: Any, m: int, width: int, x: Any, y: Any, z: Any) -> Any:
    """Trilinear interpolation on :func:`centred_extension` data.

    Same results as :func:`trilinear_gather_half` on the wrapped array (same operations in
    the same order), about twice as fast: one base index per point and the eight corners at
    fixed offsets, 32-bit indices, in-place arithmetic on numpy.

    Parameters
    ----------
    ext_flat
        Flattened ``(m+1, m+1, width)`` centred extension.
    m, width
        Padded size and x width.
    x, y, z
        Coordinates in padded grid units (arrays of one shape and of ``ext_flat``'s backend;
        not modified). Any ``y``, ``z`` wrap periodically; ``x`` (after the Friedel flip) is
        clipped to the stored range, so callers zero points beyond the stored radius.

    Returns
    -------
    Interpolated values with the shape of ``x`` and the dtype of ``ext_flat``.
    """
    be = backend_of(ext_flat, x)
    xp = be.xp
    inplace = be.name == "numpy"
    shape = tuple(x.shape)
    idt = _index_dtype(xp, int(ext_flat.shape[0]))
    neg, x, y, z = _friedel_split(xp.reshape(x, (-1,)), xp.reshape(y, (-1,)), xp.reshape(z, (-1,)), xp, inplace)
    x0, fx = _floor_frac(x, xp, idt, inplace)
    y0, fy = _floor_frac(y, xp, idt, inplace)
    z0, fz = _floor_frac(z, xp, idt, inplace)
    h = m // 2
    # base = ((z0 + h) % m * (m+1) + (y0 + h) % m) * width + min(x0, width - 2)
    z0 += h
    z0 %= m
    y0 += h
    y0 %= m
    z0 *= m + 1
    z0 += y0
    z0 *= width
    if inplace:
        np.minimum(x0, width - 2, out=x0)
    else:
        x0 = xp.minimum(x0, width - 2)
    base = z0
    base += x0
    sy = width
    sz = (m + 1) * width

    def lerp_x(off: int) -> Any:
        a = xp.take(ext_flat, base + off)
        return _lerp_(a, xp.take(ext_flat, base + (off + 1)), fx, xp, inplace)

    c00 = lerp_x(0)
    c01 = lerp_x(sy)
    c10 = lerp_x(sz)
    c11 = lerp_x(sz + sy)
    c0 = _lerp_(c00, c01, fy, xp, inplace)
    c1 = _lerp_(c10, c11, fy, xp, inplace)
    out = _lerp_(c0, c1, fz, xp, inplace)
    return xp.reshape(_conj_where(out, neg, xp, inplace), shape)


class Projector:
    """Padded Fourier transform of a reference map, sampled at rotated frequencies.

    Parameters
    ----------
    volume
        Real cubic map ``[z, y, x]`` of any backend (numpy, cupy, strict), box ``N``; the
        projector keeps everything on that backend. float32 input keeps a complex64 transform
        (and float32 coordinates) for speed.
    pad
        Padding factor (RELION ``--pad``, default 2); the padded box is
        :func:`padded_size` and the effective factor ``M / N``.
    r_max
        Largest frequency kept (Fourier pixels of the unpadded box); default ``N // 2``.
    skip_gridding
        If True, no real-space gridding pre-correction.
    kernels
        Use the backend's compiled gather kernels where it has them (numpy; strict runs them on
        its arrays' buffers); False: the array expressions, the path cupy runs.

    Attributes
    ----------
    backend, xp
        The backend of ``volume`` and its array namespace.
    box, pad, padded, r_max
        ``N``, effective padding factor, ``M``, maximum radius (Fourier pixels).
    rdtype, cdtype
        Real and complex dtypes of the backend (float32/complex64 or float64/complex128).
    data
        Padded half transform ``(M, M, M//2+1)`` (wrapped layout), scaled by ``pad**3``.
    power_spectrum
        Per-shell mean of ``|data|**2 / 2`` over padded voxels with
        ``round(|k_pad| / pad) = i`` (RELION's reference power spectrum, used to seed tau2),
        length ``N//2 + 1``, float64 on the backend.
    """

    def __init__(self, volume: Any, pad: float = 2, r_max: float | None = None,
                 skip_gridding: bool = False, kernels: bool = True) -> None:
        be = backend_of(volume)
        xp = be.xp
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"Projector needs a cubic volume, got shape {tuple(volume.shape)}")
        self.backend = be
        self.xp = xp
        n = int(volume.shape[0])
        self.box = n
        self.padded = m = padded_size(n, pad)
        self.pad = m / n
        self.r_max = float(n // 2 if r_max is None else r_max)
        self.rdtype = xp.float32 if volume.dtype == xp.float32 else xp.float64
        self.cdtype = xp.complex64 if self.rdtype == xp.float32 else xp.complex128
        self._np_cdtype = np.complex64 if self.rdtype == xp.float32 else np.complex128
        vol = xp.astype(volume, self.rdtype, copy=False)
        if not skip_gridding:
            vol = vol / gridding_sinc2(n, m, 3, be, self.rdtype)
        big = xp.zeros((m, m, m), dtype=self.rdtype, device=be.device)
        o = m // 2 - n // 2
        big[o:o + n, o:o + n, o:o + n] = vol
        F = rfft3(big) * (self.pad ** 3)
        F = xp.astype(F, self.cdtype)
        kx, ky, kz = freq_grid(m, 3, be)
        r2 = kx * kx + ky * ky + kz * kz
        max_r2 = int(round(self.r_max * self.pad)) ** 2
        inside = r2 <= max_r2
        F = xp.astype(xp.where(inside, F, 0), self.cdtype)
        self.data = F
        # centred, periodically extended copy with one extra zero column in x (x0 + 1
        # neighbour): the 8 trilinear corners sit at fixed offsets of one base index
        self._width = m // 2 + 2
        self._ext_flat = xp.reshape(centred_extension(F, self._width), (-1,))
        # the compiled kernels of the backend (None: the array expressions)
        self._gather = be.kernel("gather_rotated") if kernels else None
        self._gather_terms = be.kernel("gather_rotated_terms") if kernels else None
        # RELION's power spectrum of the reference: mean |F|^2 / 2 per shell round(r_pad / pad)
        ires = round_half_away(xp.sqrt(xp.astype(r2, xp.float64)) / self.pad)
        ires = xp.broadcast_to(ires, F.shape)
        nsh = n // 2 + 1
        valid = inside & (ires < nsh)
        idx = xp.reshape(xp.where(valid, ires, 0), (-1,))
        pw = be.bincount(idx, xp.astype(xp.reshape(xp.where(valid, xp.abs(F) ** 2 / 2, 0), (-1,)), xp.float64), nsh)
        cnt = be.bincount(idx, xp.astype(xp.reshape(valid, (-1,)), xp.float64), nsh)
        self.power_spectrum = xp.where(cnt >= 1, pw / xp.where(cnt >= 1, cnt, 1), 0)

    # ------------------------------------------------------------------ inputs
    def _input(self, a: Any, dtype: Any, what: str) -> Any:
        """``a`` as an array of the projector's backend with ``dtype`` (no copy where it is one).

        Host (numpy) input is accepted on the numpy backend only; elsewhere tables are uploaded
        by the caller, once (``be.to_device(a, "metadata")``), so no hidden copy crosses per call.
        """
        be = self.backend
        if be.owns(a):
            return be.xp.astype(a, dtype, copy=False)
        if be.name == "numpy":
            return np.asarray(a).astype(dtype, copy=False)
        raise TypeError(f"Projector on the {be.name} backend: {what} must be an array of that backend "
                        f"(upload it once with be.to_device(a, 'metadata')), not {type(a).__name__}")

    # ------------------------------------------------------------------ sampling
    def interpolate(self, points: Any) -> Any:
        """Sample the reference transform at reference-frame frequencies.

        Parameters
        ----------
        points
            ``(..., 3)`` frequencies (x, y, z) in Fourier pixels of the *unpadded* box (an array
            of the projector's backend).

        Returns
        -------
        Complex ``(...)`` on the :func:`rfft3` scale of the input volume; Friedel-conjugated
        for ``x < 0``; zero where ``|k| > r_max``.
        """
        p = self._input(points, self.rdtype, "points")
        return self._interpolate_xyz(p[..., 0], p[..., 1], p[..., 2])

    def _interpolate_xyz(self, x: Any, y: Any, z: Any) -> Any:
        """:meth:`interpolate` on separate coordinate arrays (Fourier pixels, ``rdtype``).

        Points beyond ``r_max`` are zero; ``x``, ``y``, ``z`` are not modified.
        """
        xp = self.xp
        inside = x * x + y * y + z * z <= self.r_max ** 2
        val = trilinear_gather_centred(self._ext_flat, self.padded, self._width,
                                       x * self.pad, y * self.pad, z * self.pad)
        if self.backend.name == "numpy":
            np.copyto(val, 0, where=~inside)
            return val.astype(self.cdtype, copy=False)
        return xp.astype(xp.where(inside, val, 0), self.cdtype, copy=False)

    def sample(self, A: Any, points: Any) -> Any:
        """``F_ref(A.T k)`` for a stack of rotations and a set of Fourier points.

        Parameters
        ----------
        A
            Rotation matrices ``(R, 3, 3)`` (or ``(3, 3)``), RELION's reference->particle
            (arrays of the projector's backend; host numpy on the numpy backend).
        points
            Particle-frame frequencies ``(K, 3)`` (or any ``(..., 3)``), Fourier pixels.

        Returns
        -------
        Complex ``(R, ...)`` (``(...)`` for a single matrix), on the projector's backend.
        """
        xp = self.xp
        A = self._input(A, self.rdtype, "rotation matrices")
        single = A.ndim == 2
        A = xp.reshape(A, (-1, 3, 3))
        k = self._input(points, self.rdtype, "points")
        # (A.T k)_i = sum_j A_ji k_j ; batched over rotations
        kk = xp.reshape(k, (-1, 3))
        if self._gather is not None:
            # compiled single pass: the same positions and interpolation, no (R, K) temporaries
            out = self._gather(self._ext_flat, self.padded, self._width, A, kk, self.pad, self.r_max,
                               self._np_cdtype)
        else:
            ref = xp.matmul(xp.expand_dims(kk, axis=0), A)  # (R, K, 3): row k times A = (A.T k).T
            out = self._interpolate_xyz(ref[..., 0], ref[..., 1], ref[..., 2])
        out = xp.reshape(out, (int(A.shape[0]),) + tuple(k.shape[:-1]))
        return out[0, ...] if single else out

    def sample_terms(self, A: Any, points: Any, rows: Any = None, stacked: Any = None,
                     power: Any = None) -> tuple[Any, Any]:
        """:meth:`sample` in the E-step's real row layout, written in place or returned.

        Parameters
        ----------
        A
            ``(R, 3, 3)`` rotation matrices (arrays of the projector's backend).
        points
            ``(K, 3)`` particle-frame frequencies, Fourier pixels.
        rows
            ``(R,)`` integer rows of ``stacked`` and ``power`` to write (an integer array of the
            backend; host numpy on the numpy backend). None with ``stacked`` None.
        stacked, power
            ``(n, 2K)`` and ``(n, K)`` real arrays (``rdtype``) of the backend, written in place:
            row ``rows[r]`` receives ``[Re V_r, Im V_r]`` and ``|V_r|²`` with
            ``V_r = F_ref(A_rᵀ k)``. None (both): new ``(R, 2K)`` and ``(R, K)`` arrays, row
            ``r`` for rotation ``r``.

        Returns
        -------
        ``(stacked, power)``: the arrays written (the ones passed in, or the new ones).

        Notes
        -----
        With the compiled kernel (numpy; strict, on its arrays' buffers) the rows are written in
        one pass with no complex temporary and nothing allocated; without it (cupy) the values
        are sampled and placed with :meth:`~subtomo_nb.backend.Backend.set_rows`.
        """
        be = self.backend
        xp = self.xp
        A = xp.reshape(self._input(A, self.rdtype, "rotation matrices"), (-1, 3, 3))
        k = xp.reshape(self._input(points, self.rdtype, "points"), (-1, 3))
        R, K = int(A.shape[0]), int(k.shape[0])
        if stacked is None or power is None:
            if stacked is not None or power is not None or rows is not None:
                raise ValueError("sample_terms: give rows, stacked and power together, or none of them")
            stacked = xp.empty((R, 2 * K), dtype=self.rdtype, device=be.device)
            power = xp.empty((R, K), dtype=self.rdtype, device=be.device)
            fresh = True
        else:
            rows = self._input(rows, xp.int64, "rows")
            fresh = False
        kernel = self._gather_terms
        if kernel is not None and stacked.dtype == self.rdtype and power.dtype == self.rdtype and (
                be.name != "numpy" or (stacked.flags.c_contiguous and power.flags.c_contiguous)):
            if fresh:
                rows = xp.arange(R, dtype=xp.int64, device=be.device)
            kernel(self._ext_flat, self.padded, self._width, A, k, self.pad, self.r_max, rows, stacked, power)
            return stacked, power
        V = self.sample(A, k)
        re, im = xp.real(V), xp.imag(V)
        terms = xp.astype(xp.concat([re, im], axis=1), stacked.dtype, copy=False)
        pw = xp.astype(re ** 2 + im ** 2, power.dtype, copy=False)
        if fresh:
            return terms, pw
        be.set_rows(stacked, rows, terms)
        be.set_rows(power, rows, pw)
        return stacked, power

    def rotate3d(self, A: Any, size: int | None = None) -> Any:
        """Half transforms of the rotated map, ``F_particle(k) = F_ref(A.T k)``.

        Parameters
        ----------
        A
            ``(R, 3, 3)`` or ``(3, 3)`` rotation matrices (arrays of the projector's backend).
        size
            Box of the output grid (default ``N``); frequencies stay in Fourier pixels of the
            reference box (a smaller ``size`` is a Fourier-cropped window, not rescaled).

        Returns
        -------
        ``(R, size, size, size//2+1)`` (or without the R axis), on the :func:`rfft3` scale;
        zero beyond ``min(r_max, size//2)`` (RELION's ``rotate3D``).
        """
        xp = self.xp
        size = self.box if size is None else int(size)
        k = half_points(size, 3, self.backend, self.rdtype)
        out = self.sample(A, k)
        r_out = size // 2
        return xp.where(xp.sum(k * k, axis=-1) <= r_out * r_out, out, 0)

    def slice2d(self, A: Any, size: int | None = None) -> Any:
        """Central slices: Fourier transforms of projections along z of the rotated map.

        Parameters
        ----------
        A
            ``(R, 3, 3)`` or ``(3, 3)`` (arrays of the projector's backend).
        size
            Image box (default ``N``); frequencies in Fourier pixels of the reference box.

        Returns
        -------
        ``(R, size, size//2+1)``: ``N * F_ref(A.T (kx, ky, 0))``, equal to ``rfft2`` of
        ``sum_z V(A.T r)`` (within interpolation accuracy); zero beyond
        ``min(r_max, size//2)`` (RELION's ``project``).
        """
        xp = self.xp
        size = self.box if size is None else int(size)
        k = half_points(size, 2, self.backend, self.rdtype)
        out = self.sample(A, k) * self.box
        r_out = size // 2
        return xp.astype(xp.where(xp.sum(k * k, axis=-1) <= r_out * r_out, out, 0), self.cdtype)
