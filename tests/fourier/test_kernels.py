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
