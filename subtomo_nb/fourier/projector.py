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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subtomo_nb.fourier._kernels import HAVE_NUMBA, gather_rotated, gather_rotated_terms
from subtomo_nb._array import get_xp
from subtomo_nb.fourier.fft import rfft3
from subtomo_nb.fourier.grid import freq_grid, half_points, round_half_away

__all__ = ["Projector", "padded_size", "gridding_sinc2", "trilinear_gather_half", "centred_extension",
           "trilinear_gather_centred"]


def padded_size(box: int, pad: float) -> int:
    """RELION's padded box: ``round(pad * box)`` made even (``padoridim``)."""
    m = int(round(pad * box))
    return m + (m % 2)


def gridding_sinc2(box: int, padded: int, ndim: int = 3, xp: Any = np, dtype: Any = np.float64) -> Any:
    """``sinc(r / padded)**2`` on a centred box (the FT of the trilinear kernel).

    Parameters
    ----------
    box
        Real-space box size ``N`` (pixels); the origin is voxel ``N//2``.
    padded
        Padded box size ``pad * N`` (pixels).
    ndim
        2 or 3.
    """
    c = xp.arange(box, dtype=dtype) - box // 2
    if ndim == 3:
        r = xp.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    else:
        r = xp.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    s = xp.sinc(r / padded)
    return s * s


def _index_dtype(xp: Any, size: int) -> Any:
    """int32 indices where the flat array allows it (half the memory traffic of int64)."""
    return xp.int32 if size < 2 ** 31 - 1 else xp.int64


def _lerp_(a: Any, b: Any, f: Any, xp: Any) -> Any:
    """``a + f * (b - a)`` computed in place in ``b`` (same rounding as the expression)."""
    if xp is np:
        np.subtract(b, a, out=b)
        np.multiply(b, f, out=b)
        np.add(b, a, out=b)
        return b
    return a + f * (b - a)


def _conj_where(out: Any, neg: Any, xp: Any) -> Any:
    """Complex-conjugate ``out`` where ``neg`` (in place for numpy)."""
    if not xp.iscomplexobj(out):
        return out
    if xp is np:
        np.conjugate(out, out=out, where=neg)
        return out
    return xp.where(neg, xp.conj(out), out)


def _friedel_split(x: Any, y: Any, z: Any, xp: Any) -> tuple[Any, Any, Any, Any]:
    """Map points with ``x < 0`` to ``-k``; return ``(neg, x, y, z)`` (new arrays)."""
    neg = x < 0
    if xp is np:
        x = np.negative(x, where=neg, out=x.copy())
        y = np.negative(y, where=neg, out=y.copy())
        z = np.negative(z, where=neg, out=z.copy())
        return neg, x, y, z
    return neg, xp.where(neg, -x, x), xp.where(neg, -y, y), xp.where(neg, -z, z)


def _floor_frac(c: Any, xp: Any, idt: Any) -> tuple[Any, Any]:
    """Integer floor (``idt``) and fractional part ``c - floor(c)`` of a coordinate array."""
    f0 = xp.floor(c)
    i0 = f0.astype(idt)
    if xp is np:
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
        Positions ``(..., 3)`` as (x, y, z) in grid units; points with negative x are read at
        ``-pos`` and complex-conjugated (Friedel symmetry of real maps). The caller zeroes
        points outside the stored radius.

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
    xp = get_xp(flat, pos)
    idt = _index_dtype(xp, int(flat.size))
    neg, x, y, z = _friedel_split(pos[..., 0], pos[..., 1], pos[..., 2], xp)
    x0, fx = _floor_frac(x, xp, idt)
    y0, fy = _floor_frac(y, xp, idt)
    z0, fz = _floor_frac(z, xp, idt)
    y0w, y1w = y0 % m, (y0 + 1) % m
    z0w, z1w = z0 % m, (z0 + 1) % m
    z0w *= m
    z1w *= m

    def lerp_x(zr: Any, yr: Any) -> Any:
        row = (zr + yr) * width + x0
        a = xp.take(flat, row)
        row += 1
        return _lerp_(a, xp.take(flat, row), fx, xp)

    c00 = lerp_x(z0w, y0w)
    c01 = lerp_x(z0w, y1w)
    c10 = lerp_x(z1w, y0w)
    c11 = lerp_x(z1w, y1w)
    c0 = _lerp_(c00, c01, fy, xp)
    c1 = _lerp_(c10, c11, fy, xp)
    out = _lerp_(c0, c1, fz, xp)
    return _conj_where(out, neg, xp)


def centred_extension(half: Any, width: int | None = None) -> Any:
    """Centred, periodically extended copy of a wrapped half array (for fast gathers).

    Parameters
    ----------
    half
        Half array ``(m, m, m//2+1)`` ``[z, y, x]`` in wrapped (FFT) layout (padded pixels).
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
    xp = get_xp(half)
    m = int(half.shape[0])
    width = m // 2 + 2 if width is None else int(width)
    idx = (xp.arange(m + 1) - m // 2) % m
    ext = xp.zeros((m + 1, m + 1, width), dtype=half.dtype)
    ext[..., : half.shape[-1]] = half[idx][:, idx]
    return ext


def trilinear_gather_centred(ext_flat: Any, m: int, width: int, x: Any, y: Any, z: Any) -> Any:
    """Trilinear interpolation on :func:`centred_extension` data.

    Same results as :func:`trilinear_gather_half` on the wrapped array (same operations in
    the same order), about twice as fast: one base index per point and the eight corners at
    fixed offsets, 32-bit indices, in-place arithmetic.

    Parameters
    ----------
    ext_flat
        Flattened ``(m+1, m+1, width)`` centred extension.
    m, width
        Padded size and x width.
    x, y, z
        Coordinates in padded grid units (arrays of one shape; not modified). Any ``y``, ``z``
        wrap periodically; ``x`` (after the Friedel flip) is clipped to the stored range, so
        callers zero points beyond the stored radius.

    Returns
    -------
    Interpolated values with the shape of ``x`` and the dtype of ``ext_flat``.
    """
    xp = get_xp(ext_flat, x)
    idt = _index_dtype(xp, int(ext_flat.size))
    neg, x, y, z = _friedel_split(x, y, z, xp)
    x0, fx = _floor_frac(x, xp, idt)
    y0, fy = _floor_frac(y, xp, idt)
    z0, fz = _floor_frac(z, xp, idt)
    h = m // 2
    # base = ((z0 + h) % m * (m+1) + (y0 + h) % m) * width + min(x0, width - 2)
    z0 += h
    z0 %= m
    y0 += h
    y0 %= m
    z0 *= m + 1
    z0 += y0
    z0 *= width
    if xp is np:
        np.minimum(x0, width - 2, out=x0)
    else:
        x0 = xp.minimum(x0, width - 2)
    base = z0
    base += x0
    sy = width
    sz = (m + 1) * width

    def lerp_x(off: int) -> Any:
        a = xp.take(ext_flat, base + off)
        return _lerp_(a, xp.take(ext_flat, base + (off + 1)), fx, xp)

    c00 = lerp_x(0)
    c01 = lerp_x(sy)
    c10 = lerp_x(sz)
    c11 = lerp_x(sz + sy)
    c0 = _lerp_(c00, c01, fy, xp)
    c1 = _lerp_(c10, c11, fy, xp)
    out = _lerp_(c0, c1, fz, xp)
    return _conj_where(out, neg, xp)


class Projector:
    """Padded Fourier transform of a reference map, sampled at rotated frequencies.

    Parameters
    ----------
    volume
        Real cubic map ``[z, y, x]`` (numpy or cupy), box ``N``; float32 input keeps a
        complex64 transform (and float32 coordinates) for speed.
    pad
        Padding factor (RELION ``--pad``, default 2); the padded box is
        :func:`padded_size` and the effective factor ``M / N``.
    r_max
        Largest frequency kept (Fourier pixels of the unpadded box); default ``N // 2``.
    skip_gridding
        If True, no real-space gridding pre-correction.

    Attributes
    ----------
    box, pad, padded, r_max
        ``N``, effective padding factor, ``M``, maximum radius (Fourier pixels).
    data
        Padded half transform ``(M, M, M//2+1)`` (wrapped layout), scaled by ``pad**3``.
    power_spectrum
        Per-shell mean of ``|data|**2 / 2`` over padded voxels with
        ``round(|k_pad| / pad) = i`` (RELION's reference power spectrum, used to seed tau2),
        length ``N//2 + 1``.
    """

    def __init__(self, volume: Any, pad: float = 2, r_max: float | None = None,
                 skip_gridding: bool = False) -> None:
        xp = get_xp(volume)
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"Projector needs a cubic volume, got shape {volume.shape}")
        self.xp = xp
        n = int(volume.shape[0])
        self.box = n
        self.padded = m = padded_size(n, pad)
        self.pad = m / n
        self.r_max = float(n // 2 if r_max is None else r_max)
        self.rdtype = xp.float32 if volume.dtype == xp.float32 else xp.float64
        self.cdtype = xp.complex64 if self.rdtype == xp.float32 else xp.complex128
        vol = xp.asarray(volume, dtype=self.rdtype)
        if not skip_gridding:
            vol = vol / gridding_sinc2(n, m, 3, xp, self.rdtype)
        big = xp.zeros((m, m, m), dtype=self.rdtype)
        o = m // 2 - n // 2
        big[o:o + n, o:o + n, o:o + n] = vol
        F = rfft3(big) * (self.pad ** 3)
        F = F.astype(self.cdtype)
        kx, ky, kz = freq_grid(m, 3, xp)
        r2 = kx * kx + ky * ky + kz * kz
        max_r2 = int(round(self.r_max * self.pad)) ** 2
        inside = r2 <= max_r2
        F = xp.where(inside, F, 0).astype(self.cdtype)
        self.data = F
        # centred, periodically extended copy with one extra zero column in x (x0 + 1
        # neighbour): the 8 trilinear corners sit at fixed offsets of one base index
        self._width = m // 2 + 2
        self._ext_flat = centred_extension(F, self._width).reshape(-1)
        # RELION's power spectrum of the reference: mean |F|^2 / 2 per shell round(r_pad / pad)
        ires = round_half_away(xp.sqrt(r2.astype(xp.float64)) / self.pad)
        ires = xp.broadcast_to(ires, F.shape)
        nsh = n // 2 + 1
        valid = inside & (ires < nsh)
        idx = xp.where(valid, ires, 0).ravel()
        pw = xp.bincount(idx, weights=xp.where(valid, xp.abs(F) ** 2 / 2, 0).ravel().astype(xp.float64),
                         minlength=nsh)[:nsh]
        cnt = xp.bincount(idx, weights=valid.ravel().astype(xp.float64), minlength=nsh)[:nsh]
        self.power_spectrum = xp.where(cnt >= 1, pw / xp.where(cnt >= 1, cnt, 1), 0)

    # ------------------------------------------------------------------ sampling
    def interpolate(self, points: Any) -> Any:
        """Sample the reference transform at reference-frame frequencies.

        Parameters
        ----------
        points
            ``(..., 3)`` frequencies (x, y, z) in Fourier pixels of the *unpadded* box.

        Returns
        -------
        Complex ``(...)`` on the :func:`rfft3` scale of the input volume; Friedel-conjugated
        for ``x < 0``; zero where ``|k| > r_max``.
        """
        xp = self.xp
        p = xp.asarray(points).astype(self.rdtype, copy=False)
        return self._interpolate_xyz(p[..., 0], p[..., 1], p[..., 2])

    def _interpolate_xyz(self, x: Any, y: Any, z: Any) -> Any:
        """:meth:`interpolate` on separate coordinate arrays (Fourier pixels, ``rdtype``).

        Points beyond ``r_max`` are zero; ``x``, ``y``, ``z`` are not modified.
        """
        xp = self.xp
        inside = x * x + y * y + z * z <= self.r_max ** 2
        val = trilinear_gather_centred(self._ext_flat, self.padded, self._width,
                              x * self.pad, y * self.pad, z * self.pad)
        if xp is np:
            np.copyto(val, 0, where=~inside)
            return val.astype(self.cdtype, copy=False)
        return xp.where(inside, val, 0).astype(self.cdtype, copy=False)

    def sample(self, A: Any, points: Any) -> Any:
        """``F_ref(A.T k)`` for a stack of rotations and a set of Fourier points.

        Parameters
        ----------
        A
            Rotation matrices ``(R, 3, 3)`` (or ``(3, 3)``), RELION's reference->particle.
        points
            Particle-frame frequencies ``(K, 3)`` (or any ``(..., 3)``), Fourier pixels.

        Returns
        -------
        Complex ``(R, ...)`` (``(...)`` for a single matrix).
        """
        xp = self.xp
        A = xp.asarray(A).astype(self.rdtype)
        single = A.ndim == 2
        A = A.reshape((-1, 3, 3))
        k = xp.asarray(points).astype(self.rdtype, copy=False)
        # (A.T k)_i = sum_j A_ji k_j ; batched over rotations
        kk = k.reshape(-1, 3)
        if xp is np and HAVE_NUMBA:
            # compiled single pass: the same positions and interpolation, no (R, K) temporaries
            out = gather_rotated(self._ext_flat, self.padded, self._width, A, kk, self.pad, self.r_max,
                                 self.cdtype)
        else:
            ref = xp.matmul(kk[None, :, :], A)  # (R, K, 3): row k times A = (A.T k).T
            out = self._interpolate_xyz(ref[..., 0], ref[..., 1], ref[..., 2])
        out = out.reshape((A.shape[0],) + k.shape[:-1])
        return out[0] if single else out

    def sample_terms(self, A: Any, points: Any, rows: Any, stacked: Any, power: Any) -> None:
        """:meth:`sample` written into the E-step's real row layout.

        Parameters
        ----------
        A
            ``(R, 3, 3)`` rotation matrices.
        points
            ``(K, 3)`` particle-frame frequencies, Fourier pixels.
        rows
            ``(R,)`` integer rows of ``stacked`` and ``power`` to write.
        stacked, power
            ``(n, 2K)`` and ``(n, K)`` real arrays (``rdtype``): row ``rows[r]`` receives
            ``[Re V_r, Im V_r]`` and ``|V_r|²`` with ``V_r = F_ref(A_rᵀ k)``.
        """
        xp = self.xp
        A = xp.asarray(A).astype(self.rdtype).reshape((-1, 3, 3))
        k = xp.asarray(points).astype(self.rdtype, copy=False).reshape(-1, 3)
        if xp is np and HAVE_NUMBA and stacked.dtype == self.rdtype and power.dtype == self.rdtype \
                and stacked.flags.c_contiguous and power.flags.c_contiguous:
            gather_rotated_terms(self._ext_flat, self.padded, self._width, A, k, self.pad, self.r_max,
                                 np.asarray(rows), stacked, power)
            return
        V = self.sample(A, k)
        K = k.shape[0]
        stacked[rows, :K] = V.real
        stacked[rows, K:] = V.imag
        power[rows] = V.real ** 2 + V.imag ** 2

    def rotate3d(self, A: Any, size: int | None = None) -> Any:
        """Half transforms of the rotated map, ``F_particle(k) = F_ref(A.T k)``.

        Parameters
        ----------
        A
            ``(R, 3, 3)`` or ``(3, 3)`` rotation matrices.
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
        k = half_points(size, 3, xp, self.rdtype)
        out = self.sample(A, k)
        r_out = size // 2
        return xp.where(xp.sum(k * k, axis=-1) <= r_out * r_out, out, 0)

    def slice2d(self, A: Any, size: int | None = None) -> Any:
        """Central slices: Fourier transforms of projections along z of the rotated map.

        Parameters
        ----------
        A
            ``(R, 3, 3)`` or ``(3, 3)``.
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
        k = half_points(size, 2, xp, self.rdtype)
        out = self.sample(A, k) * self.box
        r_out = size // 2
        return xp.where(xp.sum(k * k, axis=-1) <= r_out * r_out, out, 0).astype(self.cdtype)
