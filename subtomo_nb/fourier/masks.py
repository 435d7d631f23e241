"""Soft real-space masks (RELION ``src/mask.cpp``; relion-conventions.md §6.5).

Distances are measured in pixels from the box centre, voxel ``N // 2`` on every axis.

Every function runs on any array backend (:mod:`subtomo_nb.backend`: numpy, cupy, the strict
test device). Masks made from nothing (:func:`centred_radius`, :func:`soft_sphere`,
:func:`soft_edge_box_mask`) are created on ``backend`` (a Backend or its name; default numpy);
:func:`mask_particle` works on the backend of its input and takes no host copy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from subtomo_nb._array import as_dtype, backend_for
from subtomo_nb.backend import Backend, backend_of

__all__ = ["centred_radius", "mask_particle", "raised_cosine_edge", "soft_edge_box_mask", "soft_sphere"]


def _target(backend: Backend | str | None, dtype: Any) -> tuple[Backend, Any]:
    """The backend a mask is created on (default numpy) and its real dtype for ``dtype`` (None:
    float64)."""
    be = backend_for(backend)
    return be, as_dtype(be, dtype, be.xp.float64)


def raised_cosine_edge(d: Any, radius: float, width: float) -> Any:
    """Raised-cosine fall-off of a distance array (same backend and dtype as ``d``).

    ``1`` for ``d < radius``, ``0`` for ``d > radius + width`` and
    ``0.5 - 0.5 cos(pi (radius + width - d) / width)`` in between (1 -> 0); a step at ``radius``
    for ``width <= 0``. Units of ``d``, ``radius`` and ``width`` are the caller's (pixels for
    masks, Fourier pixels for filters).
    """
    xp = backend_of(d).xp
    radius, width = float(radius), float(width)
    rp = radius + width
    if width > 0:
        soft = 0.5 - 0.5 * xp.cos(math.pi * (rp - d) / width)
    else:
        soft = xp.zeros_like(d)
    return xp.where(d < radius, 1.0, xp.where(d > rp, 0.0, soft))


def centred_radius(shape: tuple[int, ...], dtype: Any = np.float64, *,
                   backend: Backend | str | None = None, device: Any = None) -> Any:
    """Distance (pixels) of every voxel of a box of ``shape`` from voxel ``n // 2`` of each axis.

    Parameters
    ----------
    shape
        Box shape (pixels).
    dtype
        Real dtype of the result (numpy or backend dtype).
    backend
        Backend (or name) the array is created on; default numpy.
    device
        Device of the result (default the backend's).
    """
    be, dt = _target(backend, dtype)
    ns = be.xp
    dev = be.device if device is None else device
    r2 = None
    nd = len(shape)
    for ax, n in enumerate(shape):
        n = int(n)
        c = ns.arange(n, dtype=dt, device=dev) - float(n // 2)
        c = ns.reshape(c, (1,) * ax + (n,) + (1,) * (nd - ax - 1))
        r2 = c * c if r2 is None else r2 + c * c
    return ns.sqrt(r2)


def soft_sphere(box: int, radius_px: float, edge_px: float = 5.0, ndim: int = 3,
                dtype: Any = np.float64, *,
                backend: Backend | str | None = None) -> Any:
    """Soft spherical (circular) mask, RELION's solvent-flattening sphere.

    ``1`` for ``d < r``; ``0`` for ``d > r + edge``; ``0.5 - 0.5 cos(pi (r + edge - d) / edge)``
    in between (falls from 1 to 0).

    Parameters
    ----------
    box
        Box size (pixels).
    radius_px
        Radius ``r`` (pixels).
    edge_px
        Width of the raised-cosine edge outside ``r`` (pixels).
    ndim
        3 (volume) or 2 (image).
    dtype
        Real dtype of the mask.
    backend
        Backend (or name) the mask is created on; default numpy.
    """
    be, dt = _target(backend, dtype)
    d = centred_radius((int(box),) * ndim, dtype=dt, backend=be)
    return be.xp.astype(raised_cosine_edge(d, radius_px, edge_px), dt)


def mask_particle(volume: Any, radius_px: float, edge_px: float = 5.0,
                  background: str | float | Any = "mean", ndim: int | None = None) -> Any:
    """Soft-mask the outside of a particle: RELION's ``softMaskOutsideMap``.

    With ``c = 0.5 + 0.5 cos(pi (r + edge - d) / edge)`` (0 at ``d = r``, 1 at ``d = r + edge``):
    voxels with ``d < r`` are untouched, ``d > r + edge`` become the background and in between
    ``value <- (1 - c) value + c background``.

    Parameters
    ----------
    volume
        Real volume ``(..., N, N, N)`` or image(s) ``(..., N, N)`` of any backend; leading axes
        are a batch.
    radius_px, edge_px
        Radius ``r`` and soft-edge width (pixels).
    background
        ``"mean"``: the ``c``-weighted mean of the voxels with ``d >= r`` (weight 1 beyond the
        edge), per batch element -- RELION's ``--zero_mask`` background; ``"zero"`` or a number:
        that constant; an array of ``volume``'s backend broadcastable to ``volume``: e.g. a
        noise image.
    ndim
        Dimensionality of one map (default: ``volume.ndim`` if 2 or 3, else 3).

    Returns
    -------
    Masked copy of ``volume`` (same backend and device; its dtype if real floating, else float64).
    """
    be = backend_of(volume)
    xp = be.xp
    if ndim is None:
        ndim = volume.ndim if volume.ndim in (2, 3) else 3
    radius_px, edge_px = float(radius_px), float(edge_px)
    rdtype = volume.dtype if volume.dtype in (xp.float32, xp.float64) else xp.float64
    d = centred_radius(tuple(volume.shape[-ndim:]), dtype=xp.float64, backend=be)
    rp = radius_px + edge_px
    if edge_px > 0:
        c = 0.5 + 0.5 * xp.cos(math.pi * (rp - d) / edge_px)
    else:
        c = xp.ones_like(d)
    c = xp.where(d < radius_px, 0.0, xp.where(d > rp, 1.0, c))
    axes = tuple(range(-ndim, 0))
    if isinstance(background, str):
        if background == "mean":
            s = xp.sum(c)
            bg = xp.sum(c * volume, axis=axes, keepdims=True) / xp.where(s > 0, s, 1.0)  # no sync
        elif background == "zero":
            bg = 0.0
        else:
            raise ValueError(f"unknown background {background!r}")
    elif isinstance(background, (int, float)):
        bg = float(background)
    else:
        bg = background
    out = (1 - c) * volume + c * bg
    return xp.astype(out, rdtype)


def soft_edge_box_mask(box: int, edge_px: float = 5.0, ndim: int = 3, dtype: Any = np.float64, *,
                       backend: Backend | str | None = None) -> Any:
    """Mask that is 1 in the box interior and tapers to 0 at the box faces.

    Separable: the product over axes of ``0.5 - 0.5 cos(pi (i + 0.5) / edge)`` for pixels whose
    centre lies within ``edge`` pixels of a face (``i`` = index distance to the nearest face,
    0 for the outermost pixel), 1 elsewhere. Use it to taper tomogram crops or maps before
    Fourier transforms (cf. ``--taper`` of relion_tomo_reconstruct_particle).

    Parameters
    ----------
    box
        Box size (pixels).
    edge_px
        Taper width (pixels); 0 gives all ones.
    ndim
        2 or 3.
    dtype
        Real dtype of the mask.
    backend
        Backend (or name) the mask is created on; default numpy.
    """
    be, dt = _target(backend, dtype)
    ns = be.xp
    box, edge_px = int(box), float(edge_px)
    i = ns.arange(box, dtype=dt, device=be.device)
    dist = ns.minimum(i, (box - 1) - i) + 0.5
    if edge_px > 0:
        w1 = ns.where(dist < edge_px, 0.5 - 0.5 * ns.cos(math.pi * dist / edge_px), 1.0)
    else:
        w1 = ns.ones(box, dtype=dt, device=be.device)
    out = None
    for ax in range(ndim):
        w = ns.reshape(w1, (1,) * ax + (box,) + (1,) * (ndim - ax - 1))
        out = w if out is None else out * w
    return ns.astype(out, dt)
