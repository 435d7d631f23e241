"""RELION-normalised Fourier transforms of centred boxes (numpy or cupy).

Conventions (``docs/internals.md``, relion-conventions.md §0):

* the real-space box is centred: the origin is voxel ``N // 2`` on every axis;
* the forward transform is divided by the number of real-space samples,
  ``F = rfftn(ifftshift(v)) / v.size`` -- so ``F[0, 0, 0]`` is the mean of ``v``;
* the inverse is un-normalised, ``v = fftshift(irfftn(F) * v.size)``;
* half transforms are in numpy's ``rfftn`` layout ``(N, N, N//2+1)`` for ``[kz, ky, kx]``
  (frequency 0 at index 0, negative frequencies wrapped), the FFTW layout RELION uses.

All functions transform the last 2 (images) or 3 (volumes) axes and are batched over any
leading axes, on the arrays of any backend (numpy, cupy, the strict test device): the backend is
the input's (:func:`~subtomo_nb.backend.backend_of`), the FFT its :meth:`~subtomo_nb.backend.Backend.fft`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from subtomo_nb.backend import backend_of
from subtomo_nb.fourier.grid import wrapped_freqs

__all__ = ["rfft3", "irfft3", "rfft2", "irfft2", "shift_half", "half_shape"]


def _sizes(n: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if not hasattr(n, "__len__"):
        return (int(n),) * ndim  # type: ignore[arg-type]
    s = tuple(int(v) for v in n)  # type: ignore[union-attr]
    if len(s) != ndim:
        raise ValueError(f"expected {ndim} sizes, got {s}")
    return s


def half_shape(n: int, ndim: int = 3) -> tuple[int, ...]:
    """Shape of the half transform of a cubic/square box of side ``n`` (pixels)."""
    return (n,) * (ndim - 1) + (n // 2 + 1,)


def _rfft(v: Any, ndim: int) -> Any:
    fft = backend_of(v).fft()
    axes = tuple(range(-ndim, 0))
    # norm="forward": forward divided by the number of samples, inverse un-normalised (RELION)
    return fft.rfftn(fft.ifftshift(v, axes=axes), axes=axes, norm="forward")


def _irfft(F: Any, n: int | Sequence[int], ndim: int) -> Any:
    fft = backend_of(F).fft()
    axes = tuple(range(-ndim, 0))
    s = _sizes(n, ndim)
    return fft.fftshift(fft.irfftn(F, s=s, axes=axes, norm="forward"), axes=axes)


def rfft3(v: Any) -> Any:
    """Half transform of centred volume(s) ``[..., z, y, x]``, divided by the voxel count.

    Parameters
    ----------
    v
        Real array ``(..., N, N, N)`` (any box sizes); float32 gives complex64.

    Returns
    -------
    Complex array ``(..., N, N, N//2+1)``: ``rfftn(ifftshift(v)) / N**3`` over the last 3 axes.
    """
    return _rfft(v, 3)


def irfft3(F: Any, n: int | Sequence[int]) -> Any:
    """Exact inverse of :func:`rfft3`.

    Parameters
    ----------
    F
        Half transform(s) ``(..., N, N, N//2+1)``.
    n
        Real-space box size (pixels): an int for cubes or ``(nz, ny, nx)``.

    Returns
    -------
    Real centred volume(s) ``(..., nz, ny, nx)``.
    """
    return _irfft(F, n, 3)


def rfft2(img: Any) -> Any:
    """Half transform of centred image(s) ``[..., y, x]``, divided by the pixel count.

    Returns complex ``(..., N, N//2+1)`` = ``rfft2(ifftshift(img)) / N**2``.
    """
    return _rfft(img, 2)


def irfft2(F: Any, n: int | Sequence[int]) -> Any:
    """Exact inverse of :func:`rfft2`; ``n`` is the image size (int or ``(ny, nx)``)."""
    return _irfft(F, n, 2)


def shift_half(F: Any, shift_xyz_px: Any, n: int | None = None) -> Any:
    """Shift the content of half transform(s) by ``t`` pixels (RELION's sign convention).

    Multiplies ``F(k)`` by ``exp(-2 pi i k.t / N)``, which moves the real-space content by
    ``+t`` (``shiftImageInFourierTransform``).

    Parameters
    ----------
    F
        Half transforms ``(..., N, N, N//2+1)`` (3D) or ``(..., N, N//2+1)`` (2D).
    shift_xyz_px
        Shifts in pixels, shape ``(..., 3)`` for 3D or ``(..., 2)`` for 2D, ordered (x, y[, z]);
        the leading axes broadcast against the leading axes of ``F``.
    n
        Real-space box size; default ``F.shape[-2]``.

    Returns
    -------
    The shifted half transforms (broadcast shape of the leading axes).
    """
    be = backend_of(F)
    xp = be.xp
    t = shift_xyz_px
    if not be.owns(t):
        if be.name != "numpy":
            raise TypeError("shift_half: shifts must be an array of the transform's backend (be.to_device)")
        t = np.asarray(t)
    ndim = int(t.shape[-1])
    if ndim not in (2, 3):
        raise ValueError("shift_xyz_px must end in an axis of length 2 or 3")
    n = int(F.shape[-2]) if n is None else int(n)
    rdtype = xp.float32 if F.dtype == xp.complex64 else xp.float64
    t = xp.astype(t, rdtype)
    # numpy.fft.fftfreq(n, 1/n) with its rounding (integers times 1 / (n * (1/n))), built on the
    # device from integers: array_api_compat refuses fftfreq(device=) for cupy devices
    k = xp.astype(wrapped_freqs(n, be, xp.float64) * (1.0 / (n * (1.0 / n))), rdtype)
    kx = xp.arange(int(F.shape[-1]), dtype=rdtype, device=be.device)
    lead = tuple(t.shape[:-1])
    pad = (1,) * ndim
    tx = xp.reshape(t[..., 0], lead + pad)
    ty = xp.reshape(t[..., 1], lead + pad)
    if ndim == 3:
        tz = xp.reshape(t[..., 2], lead + pad)
        arg = xp.reshape(kx, (1, 1, -1)) * tx + xp.reshape(k, (1, -1, 1)) * ty + xp.reshape(k, (-1, 1, 1)) * tz
    else:
        arg = xp.reshape(kx, (1, -1)) * tx + xp.reshape(k, (-1, 1)) * ty
    phase = xp.astype(xp.exp((-2j * np.pi / n) * arg), F.dtype)
    return F * phase
