"""Projector: rotated 3D transforms and central slices against analytic references."""

from __future__ import annotations

import numpy as np

from _fourier_helpers import make_blobs, random_rotations, shell_cc
from subtomo_nb.fourier.fft import rfft2, rfft3
from subtomo_nb.fourier.grid import half_points, shell_index
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix

N = 32
SHELLS = range(1, int(0.8 * (N // 2)) + 1)  # up to 0.8 Nyquist


def test_rotate3d_matches_analytic_rotation() -> None:
    b = make_blobs(N, seed=3)
    P = Projector(b.volume())
    A = euler_to_matrix(37.0, 71.0, -122.0)
    truth = rfft3(b.volume(A))
    got = P.rotate3d(A)
    assert got.shape == (N, N, N // 2 + 1)
    sh = shell_index(N)
    cc = shell_cc(truth, got, sh, SHELLS)
    assert cc.min() > 0.99, cc
    # same scale as rfft3 (gridding pre-correction compensates the trilinear attenuation)
    ratio = [np.abs(got[sh == i]).sum() / np.abs(truth[sh == i]).sum() for i in SHELLS]
    np.testing.assert_allclose(ratio, 1.0, atol=0.03)


def test_slice2d_is_transform_of_real_space_projection() -> None:
    b = make_blobs(N, seed=4)
    P = Projector(b.volume())
    A = random_rotations(3, seed=5)
    truth = rfft2(b.projections(A))
    got = P.slice2d(A)
    assert got.shape == (3, N, N // 2 + 1)
    sh = shell_index(N, 2)
    for t, g in zip(truth, got):
        assert shell_cc(t, g, sh, SHELLS).min() > 0.99
    # scale factor: slice2d = N * F3(A.T k) = rfft2(sum_z V_rot); check the low shells' amplitude
    low = sh <= 8
    np.testing.assert_allclose(np.abs(got[:, low]).sum() / np.abs(truth[:, low]).sum(), 1.0, atol=0.02)


def test_identity_without_gridding_is_exact_and_friedel() -> None:
    b = make_blobs(24, seed=6)
    v = b.volume()
    P = Projector(v, skip_gridding=True)
    k3, k2 = half_points(24, 3), half_points(24, 2)
    in3, in2 = np.sum(k3 ** 2, -1) <= 144, np.sum(k2 ** 2, -1) <= 144  # rotate3d/slice2d radius N/2
    np.testing.assert_allclose(P.rotate3d(np.eye(3)), np.where(in3, rfft3(v), 0), atol=1e-14)
    np.testing.assert_allclose(P.slice2d(np.eye(3)), np.where(in2, rfft2(v.sum(axis=0)), 0), atol=1e-13)
    # slice2d scale: the DC term is N * mean(V) = mean of the projection image
    np.testing.assert_allclose(P.slice2d(np.eye(3))[0, 0].real, v.sum(axis=0).mean(), rtol=1e-12)
    rng = np.random.default_rng(0)
    k = rng.uniform(-9, 9, (50, 3))
    np.testing.assert_allclose(P.interpolate(-k), np.conj(P.interpolate(k)), atol=1e-14)
    assert np.all(P.interpolate(np.array([[12.5, 0.0, 0.0], [8.0, 8.0, 8.0]])) == 0)  # beyond r_max


def test_sample_batches_rotations_and_points() -> None:
    b = make_blobs(24, seed=7)
    P = Projector(b.volume())
    A = random_rotations(4, seed=1)
    k = half_points(24, 3).reshape(-1, 3)[::7]
    out = P.sample(A, k)
    assert out.shape == (4, k.shape[0])
    np.testing.assert_allclose(out[2], P.interpolate(k @ A[2]), atol=1e-14)  # row k @ A = (A.T k)
    np.testing.assert_allclose(P.rotate3d(A)[1].reshape(-1)[::7], P.sample(A[1], half_points(24, 3).reshape(-1, 3)[::7])
                               * (np.sum(half_points(24, 3).reshape(-1, 3)[::7] ** 2, -1) <= 144), atol=1e-14)
    assert P.power_spectrum.shape == (13,) and P.power_spectrum[0] > P.power_spectrum[8] > 0


def test_float32_path_matches_float64() -> None:
    b = make_blobs(24, seed=8)
    v = b.volume()
    A = random_rotations(3, seed=2)
    P64, P32 = Projector(v), Projector(v.astype(np.float32))
    r64, r32 = P64.rotate3d(A), P32.rotate3d(A)
    assert r32.dtype == np.complex64
    assert np.linalg.norm(r32 - r64) / np.linalg.norm(r64) < 1e-5
    s64, s32 = P64.slice2d(A), P32.slice2d(A)
    assert np.linalg.norm(s32 - s64) / np.linalg.norm(s64) < 1e-5
