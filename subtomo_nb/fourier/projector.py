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

from subtomo_nb._array import get_xp
from subtomo_nb.fourier.fft import rfft3
from subtomo_nb.fourier.grid import freq_grid, half_points, round_half_away

__all__ = ["Projector", "padded_size", "gridding_sinc2", "trilinear_gather_half"]


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
    """
    xp = get_xp(flat, pos)
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    neg = x < 0
    sgn = xp.where(neg, -1, 1).astype(pos.dtype)
    x, y, z = x * sgn, y * sgn, z * sgn
    x0f, y0f, z0f = xp.floor(x), xp.floor(y), xp.floor(z)
    fx, fy, fz = x - x0f, y - y0f, z - z0f
    x0 = x0f.astype(xp.int64)
    y0 = y0f.astype(xp.int64)
    z0 = z0f.astype(xp.int64)
    y0w, y1w = y0 % m, (y0 + 1) % m
    z0w, z1w = z0 % m, (z0 + 1) % m
    r00 = (z0w * m + y0w) * width
    r01 = (z0w * m + y1w) * width
    r10 = (z1w * m + y0w) * width
    r11 = (z1w * m + y1w) * width

    def lerp_x(row: Any) -> Any:
        a = xp.take(flat, row + x0)
        b = xp.take(flat, row + x0 + 1)
        return a + fx * (b - a)

    c00 = lerp_x(r00)
    c01 = lerp_x(r01)
    c10 = lerp_x(r10)
    c11 = lerp_x(r11)
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    out = c0 + fz * (c1 - c0)
    if xp.iscomplexobj(out):
        out = xp.where(neg, xp.conj(out), out)
    return out


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
        # flat copy with one extra zero column in x for the x0 + 1 neighbour
        self._width = m // 2 + 2
        ext = xp.zeros((m, m, self._width), dtype=self.cdtype)
        ext[..., : m // 2 + 1] = F
        self._flat = ext.reshape(-1)
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
        p = xp.asarray(points).astype(self.rdtype)
        inside = xp.sum(p * p, axis=-1) <= self.r_max ** 2
        pos = xp.where(inside[..., None], p * self.pad, 0)
        val = trilinear_gather_half(self._flat, self.padded, self._width, pos)
        return xp.where(inside, val, 0).astype(self.cdtype)

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
        k = xp.asarray(points).astype(self.rdtype)
        # (A.T k)_i = sum_j A_ji k_j ; batched over rotations
        kk = k.reshape(-1, 3)
        ref = xp.matmul(kk[None, :, :], A)  # (R, K, 3): row k times A = (A.T k).T
        out = self.interpolate(ref).reshape((A.shape[0],) + k.shape[:-1])
        return out[0] if single else out

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
