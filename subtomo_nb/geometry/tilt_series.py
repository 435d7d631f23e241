"""RELION 5 tilt-series projection matrices (tomogram pixels -> tilt-image pixels).

Source: RELION ``src/jaz/tomography/tomogram.cpp``, ``Tomogram::setProjectionMatrix``::

    P_f = S1 · S2 · R_z(rlnTomoZRot) · R_y(rlnTomoYTilt) · R_x(rlnTomoXTilt) · S0

* ``S0`` translates by ``-(int(SizeX/2), int(SizeY/2), int(SizeZ/2))`` (tomogram centre,
  ``rlnTomoSizeX/Y/Z`` in unbinned tilt-series pixels);
* ``R_*`` are gravis ``t4Matrix::rotation(axis, angle)`` = ``t3Matrix::rotation`` (the OpenGL
  formula ``n nᵀ + cos a (I - n nᵀ) + sin a [n]×``): right-handed *active* rotations by the
  angle in degrees, e.g. ``R_y(a) = [[cos a, 0, sin a], [0, 1, 0], [-sin a, 0, cos a]]``;
* ``S1`` translates by ``(rlnTomoXShiftAngst, rlnTomoYShiftAngst, 0) / rlnTomoTiltSeriesPixelSize``;
* ``S2`` translates by ``(int(W/2), int(H/2), 0)`` of the tilt image (W x H pixels).

A tomogram point ``p = (x, y, z)`` (pixels, 0-based) lands at ``(P_f @ (x, y, z, 1))[:2]`` in
tilt image ``f``; the third row gives the depth. Consequence of the sign convention: with
``ZRot = XTilt = 0`` and no shifts, a point at ``centre + (0, 0, dz)`` appears at image
``x = int(W/2) + dz · sin(YTilt)`` (it moves by **+dz·sin(tilt)**).

RELION converts the angle to radians in single precision (``float``, pi ~ 3.1415927); this
module uses double precision, which differs by ~1e-7 relative.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .euler import rotation_about_axis

__all__ = ["projection_matrices", "project_points"]

_REQUIRED = ("rlnTomoYTilt", "rlnTomoZRot")
_LEGACY = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")


def _translation(t: Sequence[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = t
    return T


def _rotation4(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = rotation_about_axis(float(angle_deg), axis)
    return M


def _parse_vector(value: Any) -> np.ndarray:
    if isinstance(value, str):
        parts = value.strip().strip("[]").replace(",", " ").split()
        return np.array([float(p) for p in parts], dtype=np.float64)
    return np.asarray(value, dtype=np.float64).ravel()


def projection_matrices(
    tilt_table: Any,
    size_xyz: Sequence[float],
    pixel_size_A: float,
    image_size_wh: Sequence[int],
) -> np.ndarray:
    """Projection matrices of all tilt images of one tilt series, as RELION 5.

    Parameters
    ----------
    tilt_table
        ``pandas.DataFrame`` with one row per tilt image (the per-tilt-series block of
        ``tomograms.star``) and RELION labels ``rlnTomoYTilt``, ``rlnTomoZRot`` (degrees),
        ``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst`` (Å; 0 when absent) and optionally
        ``rlnTomoXTilt`` (degrees; 0 when absent). A RELION-4 table with the matrix rows
        ``rlnTomoProjX/Y/Z/W`` (strings ``"[a,b,c,d]"`` or sequences) and no angles is used
        as is.
    size_xyz
        Tomogram size ``(rlnTomoSizeX, rlnTomoSizeY, rlnTomoSizeZ)`` in unbinned tilt-series
        pixels.
    pixel_size_A
        Tilt-series pixel size (``rlnTomoTiltSeriesPixelSize``, Å).
    image_size_wh
        Tilt-image size ``(W, H)`` in pixels.

    Returns
    -------
    numpy.ndarray
        ``(F, 4, 4)`` float64, ``P_f = S1 S2 Rz Ry Rx S0`` (see module docstring).

    Raises
    ------
    ValueError
        If a required label is missing (the message names it).
    """
    columns = set(getattr(tilt_table, "columns", []))
    if not all(c in columns for c in _REQUIRED) and all(c in columns for c in _LEGACY):
        rows = [[_parse_vector(v) for v in tilt_table[c]] for c in _LEGACY]
        return np.stack([np.stack([rows[r][f] for r in range(4)]) for f in range(len(tilt_table))])
    for c in _REQUIRED:
        if c not in columns:
            raise ValueError(f"tilt-series table: missing label {c}")
    nf = len(tilt_table)

    def col(name: str) -> np.ndarray:
        if name in columns:
            return np.asarray(tilt_table[name], dtype=np.float64)
        return np.zeros(nf)

    xtilt, ytilt, zrot = col("rlnTomoXTilt"), col("rlnTomoYTilt"), col("rlnTomoZRot")
    xsh, ysh = col("rlnTomoXShiftAngst"), col("rlnTomoYShiftAngst")
    sx, sy, sz = (int(float(s)) for s in size_xyz)
    w, h = (int(s) for s in image_size_wh)
    S0 = _translation([-float(sx // 2), -float(sy // 2), -float(sz // 2)])
    S2 = _translation([float(w // 2), float(h // 2), 0.0])
    out = np.empty((nf, 4, 4))
    for f in range(nf):
        S1 = _translation([xsh[f] / pixel_size_A, ysh[f] / pixel_size_A, 0.0])
        Rx = _rotation4((1.0, 0.0, 0.0), xtilt[f])
        Ry = _rotation4((0.0, 1.0, 0.0), ytilt[f])
        Rz = _rotation4((0.0, 0.0, 1.0), zrot[f])
        out[f] = S1 @ S2 @ Rz @ Ry @ Rx @ S0
    return out


def project_points(P: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Project tomogram points into tilt images.

    Parameters
    ----------
    P
        Projection matrices ``(F, 4, 4)`` (or one ``(4, 4)``).
    points
        Tomogram positions ``(..., 3)`` (x, y, z) in tilt-series pixels.

    Returns
    -------
    numpy.ndarray
        ``(F, ..., 2)`` image positions (x, y) in pixels (``(..., 2)`` for a single matrix).
    """
    P = np.asarray(P, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    single = P.ndim == 2
    P = P.reshape(-1, 4, 4)
    q = np.einsum("fij,...j->f...i", P[:, :2, :3], p) + P[:, :2, 3].reshape((-1,) + (1,) * (p.ndim - 1) + (2,))
    return q[0] if single else q
