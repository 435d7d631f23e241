"""The phantom protein of the synthetic dataset: a chiral C6 hexamer of 3D Gaussian blobs.

The hexamer is about 90 Å across (100 Å at 5 % of the peak density) and 60 Å tall, its C6 axis along the reference z axis, centred
at the origin (``scale`` 1; :func:`blobs` and :func:`render_map` take a ``scale`` that moves the
blob centres outwards, the blob widths unchanged: the simulated tutorial dataset uses
:data:`DATASET_SCALE`). Each of the six subunits has the same five blobs; the subunits' blobs spiral with
height (chirality, so the hand is determinable) and the top and bottom differ (not D6).

A blob is ``amp · exp(−|r − c|² / (2 σ²))`` (density units, peak ``amp``); its continuous Fourier
transform is ``amp (2π σ²)^{3/2} exp(−2π² σ² |k|²) exp(−2πi k·c)`` and its projection along a
direction is a 2D Gaussian ``amp √(2π) σ exp(−|ρ − c⊥|² / (2 σ²))`` at the projected centre.
"""

from __future__ import annotations

import numpy as np

from subtomo_nb._array import fft_module

__all__ = ["SUBUNIT_BLOBS", "DATASET_SCALE", "SYMMETRY", "blobs", "render_map", "project_blobs_2d_amplitude"]

#: Blobs of subunit 0 as ``(radius Å, azimuth degrees, z Å, sigma Å, amplitude)``; the other five
#: subunits are copies rotated by multiples of 60° about z.
SUBUNIT_BLOBS: tuple[tuple[float, float, float, float, float], ...] = (
    (30.0, 0.0, -16.0, 8.0, 1.00),   # base, large
    (25.0, 16.0, 2.0, 7.0, 0.90),    # middle, turned counter-clockwise with height
    (17.0, 34.0, 19.0, 6.5, 0.80),   # upper, turned further: a right-handed spiral
    (35.0, -20.0, -2.0, 6.0, 0.60),  # outer arm on one side only: in-plane chirality
    (8.0, 20.0, 24.0, 6.0, 0.45),    # cap near the axis, on top only
)

#: Scale of the blob centres in the simulated dataset (:func:`subtomo_nb.simulate.simulate_project`):
#: the hexamer is then about 150 Å across and 100 Å tall, large enough for its six-fold in-plane
#: features (period ≈ 2π·54 Å / 6 ≈ 57 Å) to show in a reference low-passed to 50 Å, so the in-plane
#: angle is defined from the first iteration of a refinement started there.
DATASET_SCALE = 1.8

#: Point-group symbol of the phantom.
SYMMETRY = "C6"


def blobs(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All blobs of the hexamer in the reference frame (centres × ``scale``).

    Returns
    -------
    centres : numpy.ndarray
        ``(n_blobs, 3)`` blob centres ``(x, y, z)`` in Å, hexamer centre at the origin.
    sigmas : numpy.ndarray
        ``(n_blobs,)`` Gaussian standard deviations (Å).
    amplitudes : numpy.ndarray
        ``(n_blobs,)`` peak densities.
    """
    sub = np.asarray(SUBUNIT_BLOBS, dtype=np.float64)
    k = np.arange(6)[:, None]
    az = np.deg2rad(sub[None, :, 1] + 60.0 * k)
    r = sub[None, :, 0] * scale
    centres = np.stack([r * np.cos(az), r * np.sin(az), np.broadcast_to(sub[None, :, 2] * scale, az.shape)], axis=-1)
    sigmas = np.broadcast_to(sub[None, :, 3], az.shape)
    amps = np.broadcast_to(sub[None, :, 4], az.shape)
    return centres.reshape(-1, 3), sigmas.reshape(-1).copy(), amps.reshape(-1).copy()


def render_map(box: int, pixel_size_A: float, dtype: type = np.float32, scale: float = 1.0) -> np.ndarray:
    """The hexamer on a ``box³`` grid, band-limited to the grid (analytic Fourier sampling).

    The continuous transform of the blobs is sampled at the box's Fourier pixels
    (``k = n / (box · pixel)``, all of the cube up to Nyquist) and inverse transformed, which is
    what an ideal Fourier-cropped (binned) extraction of the object sees. The C6 axis is along z
    and the hexamer centre at voxel ``box // 2`` on each axis.

    Parameters
    ----------
    box
        Box size (pixels).
    pixel_size_A
        Pixel size (Å).
    dtype
        Output dtype.

    Returns
    -------
    numpy.ndarray
        ``(box, box, box)`` map indexed ``[z, y, x]``, density units (peak about 1).
    """
    c, s, a = blobs(scale)
    n = int(box)
    kx = np.fft.rfftfreq(n) / pixel_size_A
    ky = np.fft.fftfreq(n) / pixel_size_A
    kz = np.fft.fftfreq(n) / pixel_size_A
    k2 = kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2
    F = np.zeros(k2.shape, dtype=np.complex128)
    # group blobs by sigma to share the Gaussian envelope
    for sigma in np.unique(s):
        sel = s == sigma
        env = (2 * np.pi * sigma**2) ** 1.5 * np.exp(-2 * np.pi**2 * sigma**2 * k2)
        ph_x = np.exp(-2j * np.pi * kx[None, :] * c[sel, 0:1])  # (b, nx)
        ph_y = np.exp(-2j * np.pi * ky[None, :] * c[sel, 1:2])
        ph_z = np.exp(-2j * np.pi * kz[None, :] * c[sel, 2:3])
        F += env * np.einsum("b,bz,by,bx->zyx", a[sel], ph_z, ph_y, ph_x, optimize=True)
    fft = fft_module(np)
    v = fft.irfftn(F, s=(n, n, n)) / pixel_size_A**3
    return np.fft.fftshift(v).astype(dtype)


def project_blobs_2d_amplitude(sigmas: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Peak value (density · Å) of each blob's projection: ``amp · √(2π) · σ``."""
    return np.asarray(amplitudes) * np.sqrt(2 * np.pi) * np.asarray(sigmas)
