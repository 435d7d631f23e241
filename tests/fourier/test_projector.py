"""Projector: rotated 3D transforms and central slices against analytic references."""

from __future__ import annotations

import numpy as np
import pytest

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


# ---------------------------------------------------------------- strict test device == numpy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projector_sample_strict(be, dtype) -> None:
    """Every sampling method on strict arrays (the array expressions a GPU runs: strict has no
    compiled kernels) equals numpy's array path exactly, and numpy's compiled kernels to rounding:
    measured max |strict - kernel| / max|kernel| over the methods is 8.2e-7 in float32 and 1.7e-15
    in float64; tolerances 5e-6 and 1e-13 of the max."""
    rng = np.random.default_rng(3)
    n = 16
    vol = rng.standard_normal((n, n, n)).astype(dtype)
    A = random_rotations(5, seed=4).astype(dtype)
    pts = rng.uniform(-9, 9, (40, 3)).astype(dtype)
    pn = Projector(vol, pad=2)
    pa = Projector(vol, pad=2, kernels=False)
    ps = Projector(be.to_device(vol, "reference"), pad=2)
    assert ps.backend is be and be.owns(ps.data) and be.owns(ps.power_spectrum)
    assert np.array_equal(be.to_host(ps.data), pn.data)
    assert np.array_equal(be.to_host(ps.power_spectrum), pn.power_spectrum)
    Ad, pd = be.to_device(A, "metadata"), be.to_device(pts, "metadata")
    rel = 5e-6 if dtype == np.float32 else 1e-13

    def same(strict, arrays, kernel) -> None:
        s = be.to_host(strict)
        np.testing.assert_array_equal(s, arrays)
        np.testing.assert_allclose(s, kernel, rtol=0, atol=rel * float(np.abs(kernel).max()))

    same(ps.sample(Ad, pd), pa.sample(A, pts), pn.sample(A, pts))
    same(ps.sample(Ad[1, ...], pd), pa.sample(A[1], pts), pn.sample(A[1], pts))
    # sample_terms: new rows, and rows written in place into preallocated arrays
    (st0, pw0), (sta, pwa) = pn.sample_terms(A, pts), pa.sample_terms(A, pts)
    st, pw = ps.sample_terms(Ad, pd)
    same(st, sta, st0)
    same(pw, pwa, pw0)
    rows = np.array([8, 1, 3, 0, 5])
    big = be.to_device(np.full((9, 80), 7, dtype), "metadata")
    bpw = be.to_device(np.full((9, 40), 7, dtype), "metadata")
    out = ps.sample_terms(Ad, pd, be.to_device(rows, "metadata"), big, bpw)
    assert out[0] is big and out[1] is bpw
    big_h, bpw_h = be.to_host(big), be.to_host(bpw)
    np.testing.assert_array_equal(big_h[rows], sta)
    np.testing.assert_array_equal(bpw_h[rows], pwa)
    assert np.all(np.delete(big_h, rows, axis=0) == 7) and np.all(np.delete(bpw_h, rows, axis=0) == 7)
    same(ps.interpolate(pd), pa.interpolate(pts), pn.interpolate(pts))
    same(ps.rotate3d(Ad[:2, ...]), pa.rotate3d(A[:2]), pn.rotate3d(A[:2]))
    same(ps.slice2d(Ad[:2, ...], 12), pa.slice2d(A[:2], 12), pn.slice2d(A[:2], 12))


def test_projector_strict_refuses_host_inputs(be) -> None:
    """On strict, host rotations/points are refused (callers upload them once), and nothing in the
    sampling path copies data across (no transfer is counted)."""
    ps = Projector(be.to_device(np.ones((8, 8, 8)), "reference"))
    A = np.eye(3)
    pts = np.zeros((4, 3))
    with pytest.raises(TypeError, match="to_device"):
        ps.sample(A, be.to_device(pts, "metadata"))
    with pytest.raises(TypeError, match="to_device"):
        ps.sample(be.to_device(A, "metadata"), pts)
    Ad, pd = be.to_device(A, "metadata"), be.to_device(pts, "metadata")
    before = be.transfers.snapshot()
    ps.sample(Ad, pd)
    ps.sample_terms(Ad, pd)
    assert be.transfers.snapshot() == before


def test_gather_helpers_strict(be) -> None:
    """centred_extension and trilinear_gather_half on strict arrays equal numpy."""
    from subtomo_nb.fourier.projector import centred_extension, trilinear_gather_half

    rng = np.random.default_rng(5)
    n = 10
    half = rfft3(rng.standard_normal((n, n, n)))
    np.testing.assert_array_equal(be.to_host(centred_extension(be.to_device(half))), centred_extension(half))
    flat = np.concatenate([half, np.zeros((n, n, 1))], axis=-1).reshape(-1)
    pos = rng.uniform(-4, 4, (6, 5, 3))
    np.testing.assert_array_equal(be.to_host(trilinear_gather_half(be.to_device(flat), n, n // 2 + 2, be.to_device(pos))),
                                  trilinear_gather_half(flat, n, n // 2 + 2, pos))
