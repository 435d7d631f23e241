"""RELION's Euler-angle convention (ZYZ, angles in degrees).

``A = euler_to_matrix(rot, tilt, psi)`` is RELION's ``Euler_angles2matrix``. It maps the
*reference* frame to the *particle* (image/subtomogram/tomogram) frame: a point ``r_ref`` of the
reference appears at ``A @ r_ref`` in the particle, and ``F_particle(k) = F_ref(A.T @ k)``.
Vectors are ``(x, y, z)``. Source: RELION ``src/euler.cpp``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

_EPS = 16 * np.finfo(np.float32).eps


def euler_to_matrix(rot: ArrayLike, tilt: ArrayLike, psi: ArrayLike) -> np.ndarray:
    """Rotation matrices from RELION Euler angles.

    Parameters
    ----------
    rot, tilt, psi
        Angles in degrees (``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi``); broadcastable.

    Returns
    -------
    numpy.ndarray
        Shape ``(..., 3, 3)``, float64.
    """
    a, b, g = np.broadcast_arrays(*(np.deg2rad(np.asarray(x, dtype=np.float64)) for x in (rot, tilt, psi)))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    A = np.empty(a.shape + (3, 3))
    A[..., 0, 0] = cg * cb * ca - sg * sa
    A[..., 0, 1] = cg * cb * sa + sg * ca
    A[..., 0, 2] = -cg * sb
    A[..., 1, 0] = -sg * cb * ca - cg * sa
    A[..., 1, 1] = -sg * cb * sa + cg * ca
    A[..., 1, 2] = sg * sb
    A[..., 2, 0] = sb * ca
    A[..., 2, 1] = sb * sa
    A[..., 2, 2] = cb
    return A


def matrix_to_euler(A: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RELION Euler angles (degrees) from rotation matrices (``Euler_matrix2angles``).

    Parameters
    ----------
    A
        Rotation matrices, shape ``(..., 3, 3)``.

    Returns
    -------
    rot, tilt, psi : numpy.ndarray
        Degrees; rot and psi in (-180, 180], tilt in [0, 180].
    """
    A = np.asarray(A, dtype=np.float64)
    abs_sb = np.sqrt(A[..., 0, 2] ** 2 + A[..., 1, 2] ** 2)
    regular = abs_sb > _EPS
    psi = np.arctan2(A[..., 1, 2], -A[..., 0, 2])
    rot = np.arctan2(A[..., 2, 1], A[..., 2, 0])
    # sign of sin(tilt) chosen as RELION does, from psi
    sign_sb = np.where(np.abs(np.sin(psi)) < _EPS, np.sign(-A[..., 0, 2] / np.where(np.cos(psi) == 0, 1, np.cos(psi))),
                       np.sign(A[..., 1, 2] / np.where(np.sin(psi) == 0, 1, np.sin(psi))))
    sign_sb = np.where(sign_sb == 0, 1.0, sign_sb)
    tilt = np.arctan2(sign_sb * abs_sb, A[..., 2, 2])
    # gimbal lock: tilt = 0 or 180, all rotation in psi
    up = A[..., 2, 2] > 0
    psi_gl = np.where(up, np.arctan2(-A[..., 1, 0], A[..., 0, 0]), np.arctan2(A[..., 1, 0], -A[..., 0, 0]))
    tilt_gl = np.where(up, 0.0, np.pi)
    rot = np.where(regular, rot, 0.0)
    tilt = np.where(regular, tilt, tilt_gl)
    psi = np.where(regular, psi, psi_gl)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def rotation_about_axis(angle_deg: float, axis: ArrayLike) -> np.ndarray:
    """Right-handed active rotation matrix by ``angle_deg`` about ``axis`` (x, y, z)."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    t = np.deg2rad(angle_deg)
    K = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * (K @ K)


def angular_distance(A: ArrayLike, B: ArrayLike) -> np.ndarray:
    """Rotation angle (degrees) of ``A @ B.T`` for stacks of rotation matrices."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    tr = np.einsum("...ij,...ij->...", A, B)
    return np.rad2deg(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))
