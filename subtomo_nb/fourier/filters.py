"""Fourier filters and resampling of centred maps (RELION conventions).

All functions accept a single 3D volume or 2D image (``ndim`` defaults to ``x.ndim``) or a
batch with leading axes (pass ``ndim`` explicitly), on any array backend
(:mod:`subtomo_nb.backend`: numpy, cupy, the strict test device); results stay on the input's
backend and device. :func:`low_pass_weights` creates its weights on ``backend``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from subtomo_nb._array import backend_for
from subtomo_nb.backend import Backend, backend_of
from subtomo_nb.fourier.fft import irfft2, irfft3, rfft2, rfft3
from subtomo_nb.fourier.grid import radius_grid
from subtomo_nb.fourier.masks import raised_cosine_edge

__all__ = ["apply_b_factor", "fourier_crop", "fourier_pad", "low_pass", "low_pass_weights"]


def _nd(x: Any, ndim: int | None) -> int:
    nd = x.ndim if ndim is None else int(ndim)
    if nd not in (2, 3):
        raise ValueError("ndim must be 2 or 3")
    return nd


def _real_dtype(xp: Any, dtype: Any) -> Any:
    """The real dtype a filter is applied in: ``dtype`` if float32/float64, float32 for complex64,
    else float64."""
    if dtype == xp.float32 or dtype == xp.complex64:
        return xp.float32
    return xp.float64


def _fwd(x: Any, nd: int) -> Any:
    return rfft3(x) if nd == 3 else rfft2(x)


def _inv(F: Any, n: int, nd: int) -> Any:
    return irfft3(F, n) if nd == 3 else irfft2(F, n)


def low_pass_weights(box: int, resolution_A: float, pixel_size_A: float, edge_width_shells: float = 2.0,
                     ndim: int = 3, xp: ModuleType | None = None, *, backend: Backend | str | None = None) -> Any:
    """Raised-cosine low-pass transmission on the half grid (``initialLowPassFilterReferences``).

    ``radius = box * pixel / resolution - w / 2``, ``radius_p = radius + w``; transmission 1 for
    ``|k| < radius``, 0 for ``|k| > radius_p``, ``0.5 - 0.5 cos(pi (radius_p - |k|) / w)`` in
    between (0.5 at the nominal cut-off frequency). ``|k|`` in Fourier pixels, ``w`` in shells.

    Parameters
    ----------
    box
        Box size (pixels).
    resolution_A, pixel_size_A
        Cut-off resolution and pixel size (Å).
    edge_width_shells
        Width ``w`` of the cosine edge (Fourier pixels).
    ndim
        2 or 3.
    xp
        Legacy array-module argument; ``backend`` wins.
    backend
        Backend (or name) the weights are created on; default numpy.

    Returns
    -------
    float64 weights of half shape ``(box,)*(ndim-1) + (box//2+1,)``.
    """
    be = backend_for(xp if backend is None else backend)
    r = radius_grid(int(box), ndim, be)
    w = float(edge_width_shells)
    return raised_cosine_edge(r, int(box) * float(pixel_size_A) / float(resolution_A) - w / 2.0, w)


def low_pass(volume: Any, resolution_A: float, pixel_size_A: float, edge_width_shells: float = 2.0,
             ndim: int | None = None) -> Any:
    """Low-pass filter with a raised-cosine edge (RELION's ``--ini_high`` filter).

    Parameters
    ----------
    volume
        Real centred map(s).
    resolution_A
        Cut-off resolution (Å): transmission 0.5 at shell ``box * pixel / resolution``.
    pixel_size_A
        Pixel size (Å).
    edge_width_shells
        Width of the cosine edge (Fourier pixels; RELION's ``WIDTH_FMASK_EDGE`` = 2).
    ndim
        Dimensionality of one map (default ``volume.ndim``).
    """
    be = backend_of(volume)
    nd = _nd(volume, ndim)
    n = int(volume.shape[-1])
    F = _fwd(volume, nd)
    w = low_pass_weights(n, resolution_A, pixel_size_A, edge_width_shells, nd, backend=be)
    return _inv(F * be.xp.astype(w, _real_dtype(be.xp, F.dtype)), n, nd)


def apply_b_factor(volume: Any, b_factor_A2: float, pixel_size_A: float, ndim: int | None = None) -> Any:
    """Multiply the transform by ``exp(-B s**2 / 4)`` up to Nyquist, 0 beyond (``applyBFactorToMap``).

    ``s = |k| / (box * pixel)`` (1/Å). Positive ``B`` (Å²) blurs; negative ``B`` sharpens.
    """
    be = backend_of(volume)
    xp = be.xp
    nd = _nd(volume, ndim)
    n = int(volume.shape[-1])
    pixel_size_A, b_factor_A2 = float(pixel_size_A), float(b_factor_A2)
    F = _fwd(volume, nd)
    s = radius_grid(n, nd, be) / (n * pixel_size_A)
    f = xp.where(s <= 1.0 / (2.0 * pixel_size_A), xp.exp(-(b_factor_A2 / 4.0) * s * s), 0.0)
    return _inv(F * xp.astype(f, _real_dtype(xp, F.dtype)), n, nd)


def _blocks(n: int, n_box: int) -> tuple[slice, slice]:
    """Slices of the non-negative (``0 .. n - n//2 - 1``) and negative (``-(n//2) .. -1``) frequencies
    of an ``n``-pixel window in the wrapped axis of an ``n_box``-pixel box."""
    return slice(0, n - n // 2), slice(n_box - n // 2, n_box)


def _window_half(F: Any, n_old: int, n_new: int, nd: int) -> Any:
    """Copy the common frequencies of half transforms of boxes ``n_old`` -> ``n_new``.

    The signed frequencies ``-n//2 .. n - n//2 - 1`` of the smaller box ``n`` are two contiguous
    blocks on each wrapped axis, so the copy is ``2**(nd-1)`` slice assignments.
    """
    be = backend_of(F)
    xp = be.xp
    lead = tuple(F.shape[:-nd])
    out = xp.zeros(lead + (n_new,) * (nd - 1) + (n_new // 2 + 1,), dtype=F.dtype, device=be.device)
    n = min(n_old, n_new)
    nx = slice(0, n // 2 + 1)
    src, dst = _blocks(n, n_old), _blocks(n, n_new)
    if nd == 3:
        for a in range(2):
            for b in range(2):
                out[..., dst[a], dst[b], nx] = F[..., src[a], src[b], nx]
    else:
        for a in range(2):
            out[..., dst[a], nx] = F[..., src[a], nx]
    return out


def fourier_crop_half(F: Any, n_old: int, n_new: int, ndim: int = 2) -> Any:
    """Window half transforms of ``n_old``-pixel boxes to ``n_new`` pixels, in Fourier space.

    Keeps the rows (and slices) ``-n_new/2 .. n_new/2-1`` and the columns ``0 .. n_new/2`` of the
    source as they are, including the source's column ``x = n_new/2``, which becomes the new
    Nyquist column (RELION's ``Resampling::FourierCrop_fftwHalfStack``). Unlike
    :func:`fourier_crop` nothing passes through real space at the new size, so that column is
    not made Hermitian before later operations (phase shifts, CTF) act on it.

    Parameters
    ----------
    F
        Half transforms ``(..., n_old, [n_old,] n_old//2+1)``.
    n_old, n_new
        Box sizes (pixels), ``n_new <= n_old``.
    ndim
        2 or 3.

    Returns
    -------
    Half transforms ``(..., n_new, [n_new,] n_new//2+1)``, same dtype and scale.
    """
    if n_new > n_old:
        raise ValueError("fourier_crop_half: n_new larger than n_old")
    return _window_half(F, int(n_old), int(n_new), int(ndim))


def fourier_crop(x: Any, new_size: int, ndim: int | None = None) -> Any:
    """Bin a map by Fourier cropping to ``new_size`` pixels (pixel size grows by ``N / new_size``).

    Frequencies ``-n/2 .. n/2-1`` of the new box are kept (RELION's ``windowFourierTransform``);
    with the 1/N-normalised transforms the mean value (and the value scale) is unchanged.
    """
    nd = _nd(x, ndim)
    n = int(x.shape[-1])
    if new_size > n:
        raise ValueError("fourier_crop: new_size larger than the box; use fourier_pad")
    return _inv(_window_half(_fwd(x, nd), n, int(new_size), nd), int(new_size), nd)


def fourier_pad(x: Any, new_size: int, ndim: int | None = None) -> Any:
    """Up-sample a map by zero-padding its transform to ``new_size`` pixels (mean preserved)."""
    nd = _nd(x, ndim)
    n = int(x.shape[-1])
    if new_size < n:
        raise ValueError("fourier_pad: new_size smaller than the box; use fourier_crop")
    return _inv(_window_half(_fwd(x, nd), n, int(new_size), nd), int(new_size), nd)
