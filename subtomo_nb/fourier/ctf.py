"""RELION's contrast transfer function and exposure (dose) filter on 2D Fourier grids.

Conventions (RELION ``src/ctf.h``/``src/ctf.cpp``, relion-conventions.md §6.4):

* wavelength ``λ = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` Å (``V`` in volts);
* ``γ(k) = π λ kᵀ D k + (π/2) Cs λ³ |k|⁴ − φ − atan(Q0 / sqrt(1 − Q0²))`` with
  ``D = Rᵀ diag(−ΔU, −ΔV) R``, ``R`` the rotation by ``rlnDefocusAngle`` (so the defocus along the
  azimuth direction is ``ΔU``), ``k`` in 1/Å, ``Cs`` in Å and ``φ`` the phase shift (radians);
* ``CTF(k) = −sin γ(k) · exp(−B |k|² / 4) · scale`` — positive at low frequency (``+Q0`` at k=0).

Grids follow numpy's FFT layout (frequency 0 at index 0, negative frequencies wrapped); ``half``
grids are ``rfft2``'s ``(ny, nx//2 + 1)``, exactly RELION's FFTW half layout.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from subtomo_nb._array import get_xp

__all__ = [
    "electron_wavelength",
    "frequency_grid_2d",
    "ctf_gamma_2d",
    "ctf_2d",
    "dose_weight_2d",
    "critical_exposure",
]


def electron_wavelength(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Å (RELION's formula).

    Parameters
    ----------
    voltage_kV
        Acceleration voltage (kV).

    Returns
    -------
    float
        Wavelength (Å); 0.019687 Å at 300 kV.
    """
    v = float(voltage_kV) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def _shape2(shape_or_size: int | tuple[int, int]) -> tuple[int, int]:
    if np.ndim(shape_or_size) == 0:
        n = int(shape_or_size)
        return n, n
    ny, nx = (int(s) for s in shape_or_size)
    return ny, nx


def frequency_grid_2d(
    shape_or_size: int | tuple[int, int],
    pixel_size_A: float,
    half: bool = True,
    xp: ModuleType = np,
    dtype: Any = np.float64,
) -> tuple[Any, Any]:
    """Spatial-frequency components ``(kx, ky)`` in 1/Å on a 2D FFT grid.

    Parameters
    ----------
    shape_or_size
        Image size ``N`` (square) or ``(ny, nx)`` in pixels.
    pixel_size_A
        Pixel size (Å).
    half
        ``True``: ``rfft2`` half grid ``(ny, nx//2 + 1)``; ``False``: full ``fft2`` grid.
    xp
        Array module (numpy or cupy).
    dtype
        Real dtype of the result.

    Returns
    -------
    kx, ky
        Broadcastable arrays of shapes ``(1, nkx)`` and ``(ny, 1)`` (1/Å).
    """
    ny, nx = _shape2(shape_or_size)
    fx = np.fft.rfftfreq(nx) if half else np.fft.fftfreq(nx)
    fy = np.fft.fftfreq(ny)
    kx = xp.asarray(fx / pixel_size_A, dtype=dtype)[None, :]
    ky = xp.asarray(fy / pixel_size_A, dtype=dtype)[:, None]
    return kx, ky


def _batch(xp: ModuleType, *values: ArrayLike, dtype: Any = np.float64) -> list[Any]:
    """Broadcast scalar/array parameters to a common batch shape, with two trailing grid axes."""
    arrs = [xp.asarray(v, dtype=dtype) for v in values]
    shape = np.broadcast_shapes(*(a.shape for a in arrs))
    return [xp.broadcast_to(a, shape)[..., None, None] for a in arrs]


def ctf_gamma_2d(
    shape_or_size: int | tuple[int, int],
    pixel_size_A: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    defocus_u_A: ArrayLike,
    defocus_v_A: ArrayLike,
    defocus_angle_deg: ArrayLike,
    phase_shift_deg: ArrayLike = 0.0,
    half: bool = True,
    xp: ModuleType | None = None,
    dtype: Any = np.float64,
) -> Any:
    """RELION's CTF phase ``γ(k)`` (radians) on a 2D FFT grid.

    Parameters are those of :func:`ctf_2d`; the computation runs in ``dtype`` (float32 keeps
    ``γ`` to ~1e-5 rad at 2 Å and 5 µm defocus). Returns shape ``batch_shape + (ny, nkx)`` where
    ``batch_shape`` is the broadcast shape of the defocus and phase-shift arguments.
    """
    if xp is None:
        xp = get_xp(defocus_u_A, defocus_v_A, defocus_angle_deg, phase_shift_deg)
    lam = electron_wavelength(voltage_kV)
    cs_A = float(cs_mm) * 1e7
    q0 = float(amplitude_contrast)
    k1 = np.pi * lam
    k2 = 0.5 * np.pi * cs_A * lam**3
    k3 = np.arctan(q0 / np.sqrt(1.0 - q0 * q0))
    du, dv, ang, phase = _batch(xp, defocus_u_A, defocus_v_A, defocus_angle_deg, phase_shift_deg, dtype=dtype)
    kx, ky = frequency_grid_2d(shape_or_size, pixel_size_A, half=half, xp=xp, dtype=dtype)
    k1, k2, k3 = (xp.asarray(v, dtype=dtype) for v in (k1, k2, k3))
    a = xp.deg2rad(ang)
    ca, sa = xp.cos(a), xp.sin(a)
    ku = ca * kx + sa * ky  # component along the defocus-U (azimuth) direction
    kv = -sa * kx + ca * ky
    k2sum = kx * kx + ky * ky
    quad = -du * ku * ku - dv * kv * kv  # kᵀ D k
    return k1 * quad + k2 * k2sum * k2sum - xp.deg2rad(phase) - k3


def ctf_2d(
    shape_or_size: int | tuple[int, int],
    pixel_size_A: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    defocus_u_A: ArrayLike,
    defocus_v_A: ArrayLike,
    defocus_angle_deg: ArrayLike,
    phase_shift_deg: ArrayLike = 0.0,
    bfactor: ArrayLike = 0.0,
    scale: ArrayLike = 1.0,
    half: bool = True,
    intact_first_peak: bool = False,
    xp: ModuleType | None = None,
    dtype: Any = np.float32,
) -> Any:
    """RELION's CTF on a 2D FFT grid, vectorised over a batch of CTF parameters.

    Parameters
    ----------
    shape_or_size
        Image size ``N`` (square) or ``(ny, nx)`` (pixels).
    pixel_size_A
        Pixel size of the image (Å).
    voltage_kV
        Acceleration voltage (kV).
    cs_mm
        Spherical aberration (mm).
    amplitude_contrast
        Amplitude contrast ``Q0`` (fraction, e.g. 0.1).
    defocus_u_A, defocus_v_A
        ``rlnDefocusU``/``rlnDefocusV`` (Å, positive = underfocus); scalars or arrays.
    defocus_angle_deg
        ``rlnDefocusAngle`` (degrees): azimuth of the ``U`` direction from the x axis.
    phase_shift_deg
        ``rlnPhaseShift`` (degrees).
    bfactor
        ``rlnCtfBfactor`` (Å²); the envelope is ``exp(−B |k|² / 4)``.
    scale
        ``rlnCtfScalefactor``.
    half
        ``True``: ``rfft2`` half grid ``(ny, nx//2+1)``; ``False``: full ``fft2`` grid.
    intact_first_peak
        RELION's ``--ctf_intact_first_peak``: CTF set to 1 where ``|γ| < π/2``
        (before envelope and scale, as ``CTF::getCTF``).
    xp
        Array module; default from the parameter arrays (numpy for scalars).
    dtype
        Real dtype of the computation and the output (default float32).

    Returns
    -------
    array
        Shape ``batch_shape + grid_shape``, ``batch_shape`` the broadcast shape of the
        per-image parameters (``()`` for scalars).
    """
    if xp is None:
        xp = get_xp(defocus_u_A, defocus_v_A, defocus_angle_deg, phase_shift_deg, bfactor, scale)
    gamma = ctf_gamma_2d(shape_or_size, pixel_size_A, voltage_kV, cs_mm, amplitude_contrast,
                         defocus_u_A, defocus_v_A, defocus_angle_deg, phase_shift_deg, half=half, xp=xp,
                         dtype=dtype)
    ctf = -xp.sin(gamma)
    if intact_first_peak:
        ctf = xp.where(xp.abs(gamma) < 0.5 * np.pi, xp.asarray(1.0, dtype=dtype), ctf)
    b, s = _batch(xp, bfactor, scale, dtype=dtype)
    kx, ky = frequency_grid_2d(shape_or_size, pixel_size_A, half=half, xp=xp, dtype=dtype)
    if bool(xp.any(b != 0)):
        ctf = ctf * xp.exp(-0.25 * b * (kx * kx + ky * ky))
    ctf = ctf * s
    return ctf.astype(dtype, copy=False)


def critical_exposure(k_inv_A: ArrayLike) -> Any:
    """Grant & Grigorieff critical exposure ``0.245 k^−1.665 + 2.81`` (e/Å²), ``k`` in 1/Å.

    Infinite at ``k = 0``.
    """
    xp = get_xp(k_inv_A)
    k = xp.asarray(k_inv_A, dtype=xp.float64)
    with np.errstate(divide="ignore"):
        return xp.where(k > 0, 0.245 * xp.power(xp.where(k > 0, k, 1.0), -1.665) + 2.81, xp.inf)


def dose_weight_2d(
    shape_or_size: int | tuple[int, int],
    pixel_size_A: float,
    dose_e_per_A2: ArrayLike,
    bfactor_per_dose: float = 0.0,
    half: bool = True,
    xp: ModuleType | None = None,
    dtype: Any = np.float32,
) -> Any:
    """RELION's exposure filter for a batch of cumulative doses on a 2D FFT grid.

    ``w(k) = exp(−0.5 · dose / (0.245 |k|^−1.665 + 2.81))`` (``k`` in 1/Å, ``w(0) = 1``); if
    ``bfactor_per_dose > 0`` (``rlnCtfBfactorPerElectronDose``) RELION instead uses a B-factor
    ``B = bfactor_per_dose · dose``: ``w(k) = exp(−B |k|² / 4)``.

    Parameters
    ----------
    shape_or_size
        Image size ``N`` or ``(ny, nx)`` (pixels).
    pixel_size_A
        Pixel size of the image (Å).
    dose_e_per_A2
        Cumulative dose before each image, ``rlnMicrographPreExposure`` (e/Å²); scalar or array.
    bfactor_per_dose
        ``rlnCtfBfactorPerElectronDose`` (Å² per e/Å²); 0 selects the exposure filter.
    half
        ``rfft2`` half grid (``True``) or full grid.
    xp
        Array module; default from ``dose_e_per_A2``.
    dtype
        Output dtype.

    Returns
    -------
    array
        Shape ``dose.shape + grid_shape``.
    """
    if xp is None:
        xp = get_xp(dose_e_per_A2)
    (dose,) = _batch(xp, dose_e_per_A2)
    kx, ky = frequency_grid_2d(shape_or_size, pixel_size_A, half=half, xp=xp)  # float64: k^-1.665
    k2 = kx * kx + ky * ky
    if bfactor_per_dose > 0:
        w = xp.exp(-0.25 * bfactor_per_dose * dose * k2)
    else:
        d0 = critical_exposure(xp.sqrt(k2))
        w = xp.exp(-0.5 * dose / d0)
    return w.astype(dtype)
