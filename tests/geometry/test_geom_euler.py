"""RELION Euler convention (src/euler.cpp): matrix, inverse, gimbal lock."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from subtomo_nb.geometry.euler import angular_distance, euler_to_matrix, matrix_to_euler, rotation_about_axis


def _relion_formula(rot, tilt, psi):
    a, b, g = np.deg2rad(rot), np.deg2rad(tilt), np.deg2rad(psi)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    ).transpose(2, 0, 1)


def _random_angles(n=10_000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)


def test_matrix_equals_relion_formula_and_scipy():
    rot, tilt, psi = _random_angles()
    A = euler_to_matrix(rot, tilt, psi)
    assert A.shape == (10_000, 3, 3)
    assert np.abs(A - _relion_formula(rot, tilt, psi)).max() < 1e-10
    S = Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], axis=1), degrees=True).as_matrix()
    assert np.abs(A - S.transpose(0, 2, 1)).max() < 1e-10


def test_known_matrices():
    # rot=90 only: A = Rz(90)^T maps the reference x axis onto -y of the particle
    A = euler_to_matrix(90.0, 0.0, 0.0)
    assert np.allclose(A @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    # third row is the projection direction (sin t cos r, sin t sin r, cos t)
    A = euler_to_matrix(30.0, 40.0, 77.0)
    t, r = np.deg2rad(40.0), np.deg2rad(30.0)
    assert np.allclose(A[2], [np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], atol=1e-12)


def test_round_trip():
    rot, tilt, psi = _random_angles(seed=1)
    A = euler_to_matrix(rot, tilt, psi)
    r2, t2, p2 = matrix_to_euler(A)
    assert np.abs(euler_to_matrix(r2, t2, p2) - A).max() < 1e-10
    # away from gimbal lock the angles themselves come back (rot/psi in (-180, 180])
    ok = (tilt > 1) & (tilt < 179)
    d = lambda x, y: np.abs((x - y + 180) % 360 - 180)  # noqa: E731
    assert d(r2, rot)[ok].max() < 1e-8 and np.abs(t2 - tilt)[ok].max() < 1e-8 and d(p2, psi)[ok].max() < 1e-8


def test_gimbal_lock():
    for tilt in (0.0, 180.0):
        for rot, psi in [(30.0, 40.0), (-100.0, 170.0), (0.0, -90.0)]:
            A = euler_to_matrix(rot, tilt, psi)
            r2, t2, p2 = matrix_to_euler(A)
            assert r2 == 0.0
            assert t2 == tilt
            assert np.abs(euler_to_matrix(r2, t2, p2) - A).max() < 1e-10
    # tilt = 0: only rot + psi matters
    r2, t2, p2 = matrix_to_euler(euler_to_matrix(30.0, 0.0, 40.0))
    assert np.isclose(p2, 70.0)
    # tilt = 180: only psi - rot matters
    r2, t2, p2 = matrix_to_euler(euler_to_matrix(30.0, 180.0, 40.0))
    assert np.isclose(p2, 10.0)


def test_rotation_about_axis_and_distance():
    R = rotation_about_axis(90.0, [0, 0, 1])
    assert np.allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)  # right-handed, active
    assert np.isclose(angular_distance(R, np.eye(3)), 90.0)
    assert np.allclose(euler_to_matrix(90.0, 0.0, 0.0), R.T, atol=1e-12)
