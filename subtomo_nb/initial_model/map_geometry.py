"""Moving and turning a map in its box: centre of mass and rotation, as RELION's align-symmetry does.

* :func:`centre_of_mass` and :func:`translate_centre_of_mass_to_centre` (``centerOfMass``,
  ``selfTranslateCenterOfMassToCenter``: real-space linear interpolation, zero outside);
* :func:`rotate_map`: ``V(A.T r)`` through the padded Fourier projector (``rotate3D``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from subtomo_nb._array import get_xp
from subtomo_nb.fourier.fft import irfft3
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix

__all__ = ["centre_of_mass", "translate_centre_of_mass_to_centre", "rotate_map"]


def _map_coordinates(xp: Any) -> Callable[..., Any]:
    if xp is np:
        from scipy.ndimage import map_coordinates
    else:  # pragma: no cover - GPU path
        from cupyx.scipy.ndimage import map_coordinates
    return map_coordinates


def centre_of_mass(volume: Any) -> np.ndarray:
    """Centre of mass ``(x, y, z)`` in pixels from the box centre ``N // 2`` (RELION's ``centerOfMass``).

    Every voxel counts with its signed value; a map with zero total mass gives ``(0, 0, 0)``.

    Parameters
    ----------
    volume
        Real 3D array ``[z, y, x]`` (numpy or cupy).

    Returns
    -------
    numpy.ndarray
        ``(3,)`` float64, pixels.
    """
    xp = get_xp(volume)
    v = xp.asarray(volume, dtype=xp.float64)
    mass = float(v.sum())
    if mass == 0.0:
        return np.zeros(3)
    com = []
    for axis in (2, 1, 0):  # x, y, z
        n = v.shape[axis]
        other = tuple(a for a in range(3) if a != axis)
        profile = v.sum(axis=other)
        com.append(float((profile * (xp.arange(n) - n // 2)).sum()) / mass)
    return np.asarray(com)


def translate_centre_of_mass_to_centre(volume: Any) -> tuple[Any, np.ndarray]:
    """Move the centre of mass to the box centre (``selfTranslateCenterOfMassToCenter``, no wrap).

    ``out(r) = in(r + c)`` with ``c`` the centre of mass, trilinear interpolation in real space,
    zero where the source lies outside the box.

    Parameters
    ----------
    volume
        Real 3D array ``[z, y, x]`` (numpy or cupy).

    Returns
    -------
    out : array
        The shifted map (same module and float dtype; float32 for integer input).
    shift_px : numpy.ndarray
        The applied shift ``(x, y, z) = -c`` in pixels.
    """
    xp = get_xp(volume)
    vol = xp.asarray(volume)
    dtype = vol.dtype if xp.issubdtype(vol.dtype, xp.floating) else xp.float32
    vol = vol.astype(dtype, copy=False)
    com = centre_of_mass(vol)
    if not np.any(com):
        return vol.copy(), -com
    nz, ny, nx = vol.shape
    z, y, x = xp.meshgrid(xp.arange(nz, dtype=xp.float64) + com[2], xp.arange(ny, dtype=xp.float64) + com[1],
                          xp.arange(nx, dtype=xp.float64) + com[0], indexing="ij")
    out = _map_coordinates(xp)(vol, xp.stack([z, y, x]), order=1, mode="constant", cval=0.0, prefilter=False)
    return out.astype(dtype, copy=False), -com


def rotate_map(volume: Any, rot: float, tilt: float, psi: float, *, pad: int = 2) -> Any:
    """``V(A.T r)`` through the padded Fourier projector (RELION's ``rotate3D``, linear interpolation).

    Frequencies beyond Nyquist (``|k| > N/2``) are dropped, as in RELION.

    Parameters
    ----------
    volume
        Real cubic map ``[z, y, x]`` (numpy or cupy).
    rot, tilt, psi
        RELION Euler angles (degrees).
    pad
        Padding factor of the transform.

    Returns
    -------
    array
        Rotated map, float32.
    """
    xp = get_xp(volume)
    vol = xp.asarray(volume, dtype=xp.float32)
    n = int(vol.shape[0])
    proj = Projector(vol, pad=pad)
    F = proj.rotate3d(xp.asarray(euler_to_matrix(rot, tilt, psi), dtype=xp.float32))
    return irfft3(F, n).astype(xp.float32)
