"""Polar E-step against the exact Cartesian GEMM E-step (``estep.squared_differences``).

Reference: a smooth random-phase map (sum of Gaussian blobs); particles: noise-free rotated and
shifted copies, CTF-premultiplied, with a missing-wedge multiplicity and CTF² weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.fourier.fft import rfft3
from subtomo_nb.fourier.grid import half_points, radial_average, shell_index
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.refine import estep
from subtomo_nb.refine.polar import (
    PolarGrid,
    polar_flops,
    polar_particle_terms,
    polar_reference,
    polar_squared_differences,
)

N, R_MAX, PSI_STEP = 24, 10.0, 15.0
DIRS = np.array([[0.0, 0.0], [40.0, 70.0], [100.0, 30.0], [200.0, 120.0], [300.0, 80.0], [250.0, 150.0]])
SHIFTS = np.array([[x, y, z] for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)], dtype=float)
# (direction, psi index, translation index); psi index 2 = +30 degrees
TRUE = [(1, 2, 13), (3, 5, 4), (4, 17, 22), (5, 9, 0), (2, 11, 26)]


class _Blobs:
    def __init__(self, n: int, seed: int = 0, count: int = 8, radius: float = 0.3 * N) -> None:
        rng = np.random.default_rng(seed)
        d = rng.normal(size=(count, 3))
        d *= radius * rng.uniform(0, 1, (count, 1)) ** (1 / 3) / np.linalg.norm(d, axis=1, keepdims=True)
        self.centres, self.amps = d, rng.uniform(0.5, 1.5, count)
        c = np.arange(n) - n // 2
        self.z, self.y, self.x = np.meshgrid(c, c, c, indexing="ij")

    def volume(self, A: np.ndarray = np.eye(3), t: np.ndarray = np.zeros(3)) -> np.ndarray:
        """Map rotated by A (centres to A c) and shifted by -t (so that shifting by +t realigns)."""
        cs = self.centres @ np.asarray(A).T - t
        return sum(a * np.exp(-((self.x - p[0]) ** 2 + (self.y - p[1]) ** 2 + (self.z - p[2]) ** 2) / 4.5)
                   for a, p in zip(self.amps, cs))


def _weights() -> tuple[np.ndarray, np.ndarray]:
    """Missing wedge (tilt axis y, +-60 deg) multiplicity M and CTF² sums W = M (0.05 + CTF²)."""
    k = half_points(N, 3)
    ang = np.degrees(np.arctan2(np.abs(k[..., 2]), np.abs(k[..., 0])))
    M = 12 * np.clip((60 - ang) / 6 + 0.5, 0, 1) * (1 + 0.3 * np.cos(k[..., 1] / 3))
    r = np.sqrt(np.sum(k * k, -1))
    W = M * (0.05 + np.sin(0.02 * r ** 2 + 0.4) ** 2)
    return W, M


def _problem(grid: PolarGrid, dtype: type = np.float64) -> dict:
    blobs = _Blobs(N)
    ref = blobs.volume()
    W, M = _weights()
    data = np.array([W * rfft3(blobs.volume(euler_to_matrix(DIRS[d, 0], DIRS[d, 1], grid.psi_deg[m]), SHIFTS[t]))
                     for d, m, t in TRUE])
    ps = radial_average(np.abs(rfft3(ref)) ** 2)
    sigma2 = 0.2 * ps[1] * (1 + np.arange(ps.size) / 4.0)
    cdt = np.complex64 if dtype == np.float32 else np.complex128
    return dict(ref=ref.astype(dtype), data=data.astype(cdt), W=W.astype(dtype), M=M.astype(dtype),
                sigma2=sigma2.astype(dtype))


def _polar(grid: PolarGrid, pr: dict) -> np.ndarray:
    proj = Projector(pr["ref"])
    terms = polar_particle_terms(pr["data"], pr["W"], pr["M"], pr["sigma2"], grid, SHIFTS.astype(pr["W"].dtype))
    return polar_squared_differences(terms, polar_reference(proj, DIRS, grid))


def _exact(grid: PolarGrid, pr: dict) -> np.ndarray:
    """estep.squared_differences on the Cartesian points the grid stands for, at A(rot, tilt, psi_m)."""
    proj = Projector(pr["ref"])
    kc, wc, idx = grid.cartesian_points()
    P = len(TRUE)
    sh = shell_index(N).ravel()[idx]
    A = euler_to_matrix(np.repeat(DIRS[:, 0], grid.n_psi), np.repeat(DIRS[:, 1], grid.n_psi),
                        np.tile(grid.psi_deg, len(DIRS)))
    V = proj.sample(A, kc)
    terms = estep.particle_terms(pr["data"].reshape(P, -1)[:, idx],
                                 np.broadcast_to(pr["W"].ravel()[idx], (P, idx.size)),
                                 np.broadcast_to(pr["M"].ravel()[idx], (P, idx.size)),
                                 pr["sigma2"][sh] / wc)
    d2 = estep.squared_differences(terms, V, estep.phase_factors(kc, SHIFTS, N))
    return d2.reshape(P, len(DIRS), grid.n_psi, len(SHIFTS))


def _top_error(exact: np.ndarray, polar: np.ndarray, n_top: int = 50) -> float:
    """Relative error of diff2 - diff2(best) over the n_top best samples (by the exact diff2)."""
    e, q = exact.ravel(), polar.ravel()
    best = np.argmin(e)
    top = np.argsort(e)[:n_top]
    de, dq = e[top] - e[best], q[top] - q[best]
    return float(np.linalg.norm(dq - de) / np.linalg.norm(de))


@pytest.fixture(scope="module")
def default_grid_results() -> tuple[PolarGrid, np.ndarray, np.ndarray]:
    grid = PolarGrid(N, R_MAX, PSI_STEP, normalisation="unique")
    pr = _problem(grid)
    return grid, _exact(grid, pr), _polar(grid, pr)


def test_grid_quadrature_and_layout() -> None:
    grid = PolarGrid(32, 15, 15)
    assert grid.n_psi == 24 and np.all(grid.n_theta % 24 == 0)
    # weights (rings + exact core) sum to the number of rfft half-grid points, shell by shell
    np.testing.assert_allclose(grid.weights.sum() + grid.core_weights.sum(), grid.cartesian_weights().sum())
    assert grid.unsampled_weight == 0
    # smooth radial function: polar quadrature vs Cartesian sum
    f = lambda k: np.exp(-np.sum(k * k, -1) / 80.0)  # noqa: E731
    kc, wc, _ = grid.cartesian_points()
    core = np.sum(grid.core_weights * f(grid.core_points))
    # measured +3.8 % (d_rho = d_z = 1: ring midpoints sit differently within a shell than the
    # lattice points) and +0.56 % (0.5)
    np.testing.assert_allclose(np.sum(grid.weights * f(grid.points)) + core, np.sum(wc * f(kc)), rtol=0.05)
    fine = PolarGrid(32, 15, 15, d_rho=0.5, d_z=0.5)
    core = np.sum(fine.core_weights * f(fine.core_points))
    np.testing.assert_allclose(np.sum(fine.weights * f(fine.points)) + core, np.sum(wc * f(kc)), rtol=0.01)
    # arc spacing <= 1 Fourier pixel on every ring; points in the z > 0 half-ball
    assert np.all(2 * np.pi * grid.rho / grid.n_theta <= 1 + 1e-9)
    assert np.all(grid.points[:, 2] > 0) and np.all(np.sum(grid.points ** 2, -1) <= 15 ** 2 + 1e-9)
    assert polar_flops(grid, 1, 1, 1) > 0


def test_argmin_identical_and_correlated(default_grid_results) -> None:
    grid, exact, polar = default_grid_results
    assert polar.shape == exact.shape == (len(TRUE), len(DIRS), grid.n_psi, len(SHIFTS))
    for p, truth in enumerate(TRUE):
        be = np.unravel_index(np.argmin(exact[p]), exact[p].shape)
        bp = np.unravel_index(np.argmin(polar[p]), polar[p].shape)
        assert be == bp == truth, (p, be, bp, truth)
        e, q = exact[p].ravel(), polar[p].ravel()
        cc = np.corrcoef(e - e.min(), q - q.min())[0, 1]
        assert cc > 0.99, (p, cc)  # measured 0.9935 - 0.9974 (d_rho = d_z = 1)


def test_top_sample_differences_relative_error(default_grid_results) -> None:
    grid, exact, polar = default_grid_results
    err = [_top_error(exact[p], polar[p]) for p in range(len(TRUE))]
    assert max(err) < 0.2, err  # measured 0.10 - 0.15 with d_rho = d_z = 1
    fine = PolarGrid(N, R_MAX, PSI_STEP, d_rho=0.5, d_z=0.5, normalisation="unique")
    pr = _problem(fine)
    ex, po = _exact(fine, pr), _polar(fine, pr)
    err_fine = [_top_error(ex[p], po[p]) for p in range(len(TRUE))]
    assert max(err_fine) < 0.04, err_fine  # measured 0.012 - 0.022 with d_rho = d_z = 0.5
    for p in range(len(TRUE)):
        e, q = ex[p].ravel(), po[p].ravel()
        assert np.corrcoef(e - e.min(), q - q.min())[0, 1] > 0.999


def test_psi_sign_and_origin(default_grid_results) -> None:
    grid, exact, polar = default_grid_results
    d, m, t = TRUE[0]
    assert grid.psi_deg[m] == 30.0
    curve = polar[0, d, :, t]
    assert int(np.argmin(curve)) == 2
    assert curve[2] < curve[grid.n_psi - 2]  # +30 wins over -30
    np.testing.assert_array_equal(np.argmin(exact[0, d, :, t]), 2)


def test_float32_matches_float64() -> None:
    grid = PolarGrid(N, R_MAX, PSI_STEP)
    d64 = _polar(grid, _problem(grid, np.float64))
    d32 = _polar(grid, _problem(grid, np.float32))
    assert d32.dtype == np.float32
    for p in range(len(TRUE)):
        rel = np.abs((d32[p] - d32[p].min()) - (d64[p] - d64[p].min())).max() / np.ptp(d64[p])
        assert rel < 1e-4, rel
        assert np.argmin(d32[p]) == np.argmin(d64[p])


def test_rfft_normalisation_argmin() -> None:
    grid = PolarGrid(N, R_MAX, PSI_STEP, normalisation="rfft")
    pr = _problem(grid)
    exact, polar = _exact(grid, pr), _polar(grid, pr)
    for p in range(len(TRUE)):
        assert np.argmin(exact[p]) == np.argmin(polar[p])


@pytest.mark.gpu
def test_cupy_matches_numpy() -> None:
    cp = pytest.importorskip("cupy", reason="cupy is not installed (GPU extra)")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"no CUDA device: {err}")
    grid = PolarGrid(N, R_MAX, PSI_STEP)
    pr = _problem(grid, np.float32)
    d_np = _polar(grid, pr)
    g = {k: cp.asarray(v) for k, v in pr.items()}
    terms = polar_particle_terms(g["data"], g["W"], g["M"], g["sigma2"], grid, cp.asarray(SHIFTS, dtype=cp.float32))
    d_cp = polar_squared_differences(terms, polar_reference(Projector(g["ref"]), DIRS, grid))
    np.testing.assert_allclose(cp.asnumpy(d_cp), d_np, rtol=1e-3, atol=1e-3 * np.ptp(d_np))
