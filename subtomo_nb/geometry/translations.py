"""Translational sampling as RELION's ``HealpixSampling::setTranslations`` /
``getTranslationsInPixel`` (``src/healpix_sampling.cpp``), without helical options and without
the random perturbation.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["translation_grid", "oversampled_translations"]


def translation_grid(offset_range_A: float, offset_step_A: float, pixel_size_A: float, dim: int = 3) -> np.ndarray:
    """Coarse translations: a Cartesian grid with step ``offset_step_A`` inside a sphere/disc.

    RELION builds the grid in Å: ``i * step`` for ``|i| <= ceil(range / step)`` on every axis
    (x outer, then y, then z), keeps the points with ``x² + y² + z² <= range²`` (3D) or
    ``x² + y² < range² + 0.001`` (2D), and divides by the pixel size.

    Parameters
    ----------
    offset_range_A
        Search radius (Å, ``--offset_range`` times the pixel size).
    offset_step_A
        Grid step (Å), > 0.
    pixel_size_A
        Pixel size (Å) to convert to pixels.
    dim
        3 for subtomograms (x, y, z offsets), 2 for images (x, y).

    Returns
    -------
    numpy.ndarray
        ``(T, dim)`` offsets in pixels, columns (x, y[, z]); ``(0, 0[, 0])`` is always included.
    """
    if not offset_step_A > 0:
        raise ValueError(f"offset step must be > 0 Å, got {offset_step_A}")
    if offset_range_A < 0:
        raise ValueError(f"offset range must be >= 0 Å, got {offset_range_A}")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    maxp = int(np.ceil(offset_range_A / offset_step_A))
    k = np.arange(-maxp, maxp + 1) * float(offset_step_A)
    grids = np.meshgrid(*([k] * dim), indexing="ij")  # x outer, z inner
    pts = np.stack([g.ravel() for g in grids], axis=-1)
    r2 = (pts**2).sum(axis=1)
    rr = float(offset_range_A) ** 2
    keep = (r2 <= rr) if dim == 3 else (r2 < rr + 0.001)
    return pts[keep] / float(pixel_size_A)


def oversampled_translations(
    translations_px: ArrayLike, offset_step_A: float, pixel_size_A: float, oversampling: int = 1
) -> np.ndarray:
    """Fine translations of coarse ones (adaptive oversampling).

    Each coarse offset ``t`` gives ``2**o`` values per axis, ``t - s/2 + (k + 1/2) s / 2**o``
    with ``s`` the coarse step (for ``o = 1``: ``t ± s/4``), i.e. 8 children in 3D, 4 in 2D,
    ordered x outer, z inner.

    Parameters
    ----------
    translations_px
        Coarse offsets ``(T, dim)`` in pixels.
    offset_step_A
        Coarse step (Å).
    pixel_size_A
        Pixel size (Å).
    oversampling
        Oversampling order ``o``.

    Returns
    -------
    numpy.ndarray
        ``(T, 2**(o*dim), dim)`` offsets in pixels.
    """
    t = np.asarray(translations_px, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] not in (2, 3):
        raise ValueError(f"translations must have shape (T, 2) or (T, 3), got {t.shape}")
    dim = t.shape[1]
    n = 1 << int(oversampling)
    s = float(offset_step_A) / float(pixel_size_A)
    d = -0.5 * s + (0.5 + np.arange(n)) * s / n
    grids = np.meshgrid(*([d] * dim), indexing="ij")
    offs = np.stack([g.ravel() for g in grids], axis=-1)  # (n**dim, dim)
    return t[:, None, :] + offs[None, :, :]
