"""The compiled (numba) gather/scatter kernels equal the array code they replace on numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.fourier import _kernels
from subtomo_nb.fourier.backprojector import BackProjector, trilinear_scatter_half
from subtomo_nb.fourier.grid import half_points
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix

pytestmark = pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba is not installed")


def _rotations(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return euler_to_matrix(rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                           rng.uniform(-180, 180, n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gather_equals_array_interpolation(dtype):
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(24, 24, 24)).astype(dtype)
    proj = Projector(vol, pad=2)
    A = _rotations(7).astype(dtype)
    pts = half_points(24, 3, np, dtype).reshape(-1, 3)
    fast = proj.sample(A, pts)
    ref = np.matmul(pts[None].astype(dtype), A)
    slow = proj._interpolate_xyz(ref[..., 0], ref[..., 1], ref[..., 2])
    assert fast.dtype == slow.dtype and fast.shape == slow.shape
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(fast, slow, rtol=0, atol=tol * np.abs(slow).max())
    assert np.count_nonzero(fast == 0) == np.count_nonzero(slow == 0) > 0  # same r_max cut


def test_scatter_equals_array_scatter():
    rng = np.random.default_rng(2)
    n, pad = 16, 2
    bp = BackProjector(n, pad=pad, r_max=7)
    A = _rotations(5, seed=3)
    pts = half_points(n, 3, np).reshape(-1, 3)
    vals = rng.normal(size=(5, len(pts))) + 1j * rng.normal(size=(5, len(pts)))
    wts = rng.uniform(0.1, 1.0, size=(5, len(pts)))
    bp.insert(A, vals, wts, pts)
    keep = (np.sum(pts ** 2, axis=1) <= 7 ** 2).astype(float)
    ref = np.einsum("rji,kj->rki", A, pts) * bp.pad
    d, (w,) = trilinear_scatter_half(bp.padded, ref, vals, [wts], mask=np.broadcast_to(keep, vals.shape))
    np.testing.assert_allclose(bp.data, d, rtol=0, atol=1e-12 * np.abs(d).max())
    np.testing.assert_allclose(bp.weight, w, rtol=0, atol=1e-12 * np.abs(w).max())
    assert np.abs(d).max() > 0 and np.count_nonzero(w) > 1000


def test_blocked_scatter_equals_array_scatter_and_does_not_depend_on_threads(monkeypatch):
    """Enough rotations for several scatter blocks: the same sums as the array code, and the
    same bits whether the blocks run on numba's threads or one after the other."""
    rng = np.random.default_rng(4)
    n, pad, R = 12, 2, 4 * _kernels.SCATTER_MIN_ROTATIONS
    A = _rotations(R, seed=5)
    pts = half_points(n, 3, np).reshape(-1, 3)
    vals = rng.normal(size=(R, len(pts))) + 1j * rng.normal(size=(R, len(pts)))
    wts = rng.uniform(0.1, 1.0, size=(R, len(pts)))
    results = []
    for parallel in (True, False):
        monkeypatch.setattr(_kernels, "parallel_allowed", lambda p=parallel: p)
        bp = BackProjector(n, pad=pad, r_max=5)
        bp.insert(A, vals, wts, pts)
        results.append((bp.data.copy(), bp.weight.copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    keep = (np.sum(pts ** 2, axis=1) <= 5 ** 2).astype(float)
    ref = np.einsum("rji,kj->rki", A, pts) * bp.pad
    d, (w,) = trilinear_scatter_half(bp.padded, ref, vals, [wts], mask=np.broadcast_to(keep, vals.shape))
    np.testing.assert_allclose(results[0][0], d, rtol=0, atol=1e-12 * np.abs(d).max())
    np.testing.assert_allclose(results[0][1], w, rtol=0, atol=1e-12 * np.abs(w).max())


@pytest.mark.parametrize("parallel", [True, False])
def test_gather_into_rows_equals_sample(monkeypatch, parallel):
    monkeypatch.setattr(_kernels, "parallel_allowed", lambda: parallel)
    rng = np.random.default_rng(6)
    proj = Projector(rng.normal(size=(16, 16, 16)).astype(np.float32), pad=2)
    A = _rotations(40, seed=7)
    pts = half_points(16, 3, np, np.float32).reshape(-1, 3)
    K = len(pts)
    rows = rng.permutation(60)[:40]
    stacked = np.full((60, 2 * K), np.nan, np.float32)
    power = np.full((60, K), np.nan, np.float32)
    proj.sample_terms(A, pts, rows, stacked, power)
    V = proj.sample(A, pts)
    np.testing.assert_array_equal(stacked[rows, :K], V.real)
    np.testing.assert_array_equal(stacked[rows, K:], V.imag)
    np.testing.assert_allclose(power[rows], V.real ** 2 + V.imag ** 2, rtol=1e-6)
    untouched = np.setdiff1d(np.arange(60), rows)
    assert np.isnan(stacked[untouched]).all() and np.isnan(power[untouched]).all()
