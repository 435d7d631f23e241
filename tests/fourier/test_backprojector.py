"""Back-projection and RELION reconstruction against known volumes."""

from __future__ import annotations

import numpy as np
import pytest

from _fourier_helpers import make_blobs, random_rotations
from subtomo_nb.fourier import _kernels, backprojector
from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.fft import rfft2, rfft3
from subtomo_nb.fourier.fsc import fsc
from subtomo_nb.fourier.grid import half_points, shell_index
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.fourier.reconstruct import ssnr_tau2_from_fsc
from subtomo_nb.geometry.euler import rotation_about_axis

N = 32
TOP = int(0.8 * (N // 2))  # 0.8 Nyquist


@pytest.fixture(scope="module")
def slices_bp():
    """300 analytic projections (their rfft2) of a blob volume inserted as central slices."""
    b = make_blobs(N, seed=11, sigma=1.3)
    A = random_rotations(300, seed=12)
    S = rfft2(b.projections(A))
    bp = BackProjector(N, pad=2, data_dim=2)
    bp.insert2d(A, S)
    return b, A, S, bp


@pytest.mark.parametrize("skip_gridding", [True, False])
def test_reconstruct_from_slices(slices_bp, skip_gridding: bool) -> None:
    b, _, _, bp = slices_bp
    rec = bp.reconstruct(skip_gridding=skip_gridding)
    truth = b.volume()
    f = fsc(rec, truth)
    assert f[1:TOP + 1].min() > 0.99, f
    # scale: data_dim=2 divides by pad**3 * N, so the map has the amplitude of the truth
    scale = (rec * truth).sum() / (truth * truth).sum()
    assert abs(scale - 1) < 0.02, scale
    assert np.abs(rec - truth).max() < 0.02 * truth.max()


def test_insert3d_identity_pad1_is_exact() -> None:
    b = make_blobs(24, seed=13)
    v = b.volume()
    bp = BackProjector(24, pad=1)
    bp.insert3d(np.eye(3), rfft3(v), np.full((24, 24, 13), 2.0))
    k = half_points(24, 3)
    inside = np.sum(k ** 2, -1) <= 144
    # data and weight accumulate separately; the x = 0 plane is Hermitian-consistent
    filled = bp.weight > 0
    ratio = np.where(filled, bp.data / np.where(filled, bp.weight, 1), 0)
    np.testing.assert_allclose(ratio[filled], rfft3(v)[filled] / 2.0, atol=1e-15)
    # all of the sphere except the two self-conjugate Nyquist voxels (0,-12,0), (-12,0,0) on the
    # skipped half of the x = 0 plane; the DC voxel is its own mate and counted twice (as RELION)
    assert filled.sum() == inside.sum() - 2 and not filled[inside == 0].any()
    np.testing.assert_allclose(bp.weight[filled], np.where(np.arange(filled.sum()) == 0, 4.0, 2.0))
    rec = bp.reconstruct(edge_mask=False, do_gridding_correction=False)
    # D / W = F / 2; only the corner frequencies beyond r_max are missing from the round trip
    np.testing.assert_allclose(rec, v / 2, atol=1e-4 * v.max())


def test_unregularised_average_pad2_recovers_grid() -> None:
    b = make_blobs(24, seed=14)
    v = b.volume()
    bp = BackProjector(24, pad=2)
    bp.insert3d(np.eye(3), rfft3(v), np.full((24, 24, 13), 3.0))
    avg = bp.unregularised_average()
    k = half_points(24, 3)
    inside = np.sum(k ** 2, -1) < 144
    # padded voxel 2k holds F(k) with weight 3; its neighbours have zero weight
    np.testing.assert_allclose(avg[inside], rfft3(v)[inside] / 3.0, atol=1e-15)


def test_insert3d_at_orientations_reconstructs() -> None:
    b = make_blobs(24, seed=15, spread=3.0, sigma=1.1)
    A = random_rotations(24, seed=16)
    # particle-frame data = transform of the rotated volume V(A.T r)
    data = np.stack([rfft3(b.volume(a)) for a in A])
    bp = BackProjector(24, pad=2)
    bp.insert3d(A, data)
    f = fsc(bp.reconstruct(), b.volume())
    assert f[1:int(0.8 * 12) + 1].min() > 0.99, f


def test_symmetrise_c4_equals_explicit_copies() -> None:
    n = 24
    b = make_blobs(n, seed=17, spread=5.0)
    P = Projector(b.volume())
    A = random_rotations(30, seed=18)
    S = P.slice2d(A)
    ops = np.stack([rotation_about_axis(90.0 * i, [0, 0, 1]) for i in range(4)])
    b1 = BackProjector(n, data_dim=2, r_max=n // 2 - 2)
    b1.insert2d(A, S)
    b1.symmetrise(ops)
    b2 = BackProjector(n, data_dim=2, r_max=n // 2 - 2)
    b2.insert2d(np.einsum("rij,sjk->rsik", A, ops).reshape(-1, 3, 3), np.repeat(S, 4, axis=0))
    k = half_points(b1.padded, 3)
    inside = np.sum(k ** 2, -1) <= (2 * (n // 2 - 2)) ** 2
    scale = np.abs(b2.data).max()
    np.testing.assert_allclose(b1.data[inside], b2.data[inside], atol=1e-12 * scale)
    np.testing.assert_allclose(b1.weight[inside], b2.weight[inside], atol=1e-12 * b2.weight.max())
    r1, r2 = b1.reconstruct(), b2.reconstruct()
    np.testing.assert_allclose(r1, r2, atol=1e-12 * np.abs(r2).max())


def test_add_equals_joint_insertion(slices_bp) -> None:
    _, A, S, bp = slices_bp
    h1, h2 = BackProjector(N, data_dim=2), BackProjector(N, data_dim=2)
    h1.insert2d(A[:150], S[:150])
    h2.insert2d(A[150:], S[150:])
    h1.add(h2)
    np.testing.assert_allclose(h1.data, bp.data, atol=1e-12 * np.abs(bp.data).max())
    np.testing.assert_allclose(h1.weight, bp.weight, atol=1e-12 * bp.weight.max())


def test_wiener_regularisation_and_ssnr(slices_bp) -> None:
    _, _, _, bp = slices_bp
    plain = bp.reconstruct()
    # huge tau2: the regularisation vanishes
    np.testing.assert_allclose(bp.reconstruct(tau2=np.full(N // 2 + 1, 1e12)), plain, atol=1e-9)
    # tiny tau2: shells >= minres_map are suppressed, shells below untouched
    damped = bp.reconstruct(tau2=np.full(N // 2 + 1, 1e-12), minres_map=5, edge_mask=False,
                            do_gridding_correction=False)
    ref = bp.reconstruct(edge_mask=False, do_gridding_correction=False)
    Fd, Fr = rfft3(damped), rfft3(ref)
    sh = shell_index(N)
    hi, lo = sh >= 8, sh <= 2
    # (cropping the padded map leaks a little power across shells, hence ratios, not zeros)
    assert np.sum(np.abs(Fd[hi]) ** 2) < 1e-2 * np.sum(np.abs(Fr[hi]) ** 2)
    assert abs(np.sum(np.abs(Fd[lo]) ** 2) / np.sum(np.abs(Fr[lo]) ** 2) - 1) < 0.02
    # SSNR / tau2 from an FSC on a constant weight c: sigma2 = 1 / (pad^3 c)
    c, pad = 4.0, 2.0
    w = np.full((64, 64, 33), c)
    f = np.full(N // 2 + 1, 0.8)
    f[10:] = 0.1
    res = ssnr_tau2_from_fsc(f, w, N, pad)
    np.testing.assert_allclose(res.sigma2[1:], 1 / (pad ** 3 * c))
    np.testing.assert_allclose(res.ssnr[:10], 4.0)
    np.testing.assert_allclose(res.ssnr[10:], 0.1 / 0.9)
    np.testing.assert_allclose(res.tau2, res.ssnr * res.sigma2)
    np.testing.assert_allclose(res.fourier_coverage[1:10], 1.0)
    np.testing.assert_allclose(res.fourier_coverage[10:16], 0.0)
    whole = ssnr_tau2_from_fsc(f, w, N, pad, whole_data=True)
    fw = np.sqrt(2 * 0.8 / 1.8)
    np.testing.assert_allclose(whole.ssnr[:10], fw / (1 - fw))


def test_float32_reconstruction_matches_float64(slices_bp) -> None:
    _, A, S, bp = slices_bp
    b32 = BackProjector(N, data_dim=2, dtype=np.float32)
    b32.insert2d(A, S.astype(np.complex64))
    r64, r32 = bp.reconstruct(), b32.reconstruct()
    assert r32.dtype == np.float32
    assert np.linalg.norm(r32 - r64) / np.linalg.norm(r64) < 1e-5


# ---------------------------------------------------------------- strict test device == numpy


def _filled(backend, dtype, kernels: bool = True) -> BackProjector:
    """insert3d, insert2d, insert (shared and per-rotation points) and C4 symmetrise, on ``backend``."""
    rng = np.random.default_rng(21)
    n = 12
    vol = rng.standard_normal((n, n, n)).astype(dtype)
    A = random_rotations(6, seed=22)
    F = np.repeat(rfft3(vol)[None], 3, axis=0)
    img = np.repeat(rfft2(vol[0])[None], 2, axis=0)
    pts = rng.uniform(-7, 7, (30, 3))
    vals = (rng.standard_normal((6, 30)) + 1j * rng.standard_normal((6, 30))).astype(F.dtype)
    wts = rng.uniform(0, 1, (6, 30)).astype(dtype)
    pts_r = rng.uniform(-7, 7, (6, 30, 3))
    ops = np.stack([rotation_about_axis(90.0 * i, [0, 0, 1]) for i in range(4)])
    be = backend if not isinstance(backend, str) else None
    up = (lambda a: a) if be is None else (lambda a: be.to_device(a, "particles"))
    bp = BackProjector(n, pad=2, dtype=dtype, backend=backend, kernels=kernels)
    bp.insert3d(up(A[:3]), up(F), up(np.abs(F) ** 2))
    bp.insert2d(up(A[3:5]), up(img))
    bp.insert(up(A), up(vals), up(wts), up(pts))
    bp.insert(up(A), up(vals), None, up(pts_r), mask=up((pts_r[..., 0] > 0).astype(dtype)))
    bp.symmetrise(ops)
    return bp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backprojector_insert_symmetrise_strict(be, dtype) -> None:
    """Insertion (3D, 2D, points, masks) and symmetrise on strict accumulators (the array path a
    GPU runs: strict has no compiled kernels) equal numpy's array path exactly, and numpy's
    compiled scatter to the accumulation order: measured max |strict - kernel| / max|kernel| is
    3.6e-8 (data) and 7.4e-9 (weight) in float32 (the array path sums in float32, the kernel in
    float64 per call), 2.6e-15 and 1.9e-16 in float64; tolerances 1e-6 and 1e-13 of the max."""
    bs = _filled(be, dtype, kernels=True)  # strict: kernel("scatter_rotated") is None
    assert bs._scatter is None
    assert bs.backend is be and be.owns(bs.data) and be.owns(bs.weight)
    sd, sw = be.to_host(bs.data), be.to_host(bs.weight)
    ba = _filled("numpy", dtype, kernels=False)
    np.testing.assert_array_equal(sd, ba.data)
    np.testing.assert_array_equal(sw, ba.weight)
    bn = _filled("numpy", dtype)
    assert bn._scatter is not None or not _kernels.HAVE_NUMBA
    rel = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(sd, bn.data, rtol=0, atol=rel * float(np.abs(bn.data).max()))
    np.testing.assert_allclose(sw, bn.weight, rtol=0, atol=rel * float(bn.weight.max()))
    total = BackProjector(12, pad=2, dtype=dtype, backend=be)
    total.add(bs)
    total.add(bs)
    np.testing.assert_array_equal(be.to_host(total.weight), 2 * sw)


@pytest.mark.parametrize("chunk", [7, 100])
def test_array_path_chunks_and_pending_sums(monkeypatch, chunk: int) -> None:
    """The array path in chunks smaller than one rotation's points (7) or spanning several
    rotations (100) gives the compiled kernel's sums, and its pending data sums reach ``data`` on
    every read, also between inserts and after ``data`` is replaced."""
    monkeypatch.setattr(backprojector, "SCATTER_CHUNK_POINTS", chunk)
    arr = _filled("numpy", np.float64, kernels=False)
    ref = _filled("numpy", np.float64)
    np.testing.assert_allclose(arr.data, ref.data, rtol=0, atol=1e-13 * np.abs(ref.data).max())
    np.testing.assert_allclose(arr.weight, ref.weight, rtol=0, atol=1e-13 * ref.weight.max())
    rng = np.random.default_rng(5)
    A = random_rotations(3, seed=6)
    pts = rng.uniform(-5, 5, (20, 3))
    vals = rng.standard_normal((3, 20)) + 1j * rng.standard_normal((3, 20))
    a, k = BackProjector(12, kernels=False), BackProjector(12)
    for bp in (a, k):
        bp.insert(A, vals, None, pts)
        first = bp.data.copy()
        bp.insert(A, vals, None, pts)
        assert np.allclose(bp.data, 2 * first, rtol=0, atol=1e-13 * np.abs(first).max())
        bp.insert(A, vals, None, pts)
        bp.data = first  # replaces the sums, pending ones included
        assert np.array_equal(bp.data, first)
    np.testing.assert_allclose(a.data, k.data, rtol=0, atol=1e-13 * np.abs(k.data).max())


def test_backprojector_strict_refuses_host_inputs(be) -> None:
    bp = BackProjector(8, backend="strict")
    with pytest.raises(TypeError, match="to_device"):
        bp.insert(np.eye(3), be.to_device(np.ones(4, complex)), None, be.to_device(np.zeros((4, 3))))


def test_backprojector_unregularised_average_strict(be) -> None:
    """The half-set FSC input (D/W binned to the unpadded grid) from strict sums equals numpy's."""
    bn = _filled("numpy", np.float64)
    bs = _filled(be, np.float64)
    np.testing.assert_allclose(be.to_host(bs.unregularised_average()), bn.unregularised_average(),
                               rtol=1e-12, atol=1e-12)
