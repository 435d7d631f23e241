"""Benchmark: exact GEMM E-step vs the polar E-step (``subtomo_nb.refine.polar``).

Realistic size: box 32, r_max 15, HEALPix order 2 directions in C6's asymmetric unit, psi step
15 degrees, 81 translations, 64 particles (float32). Prints the time and effective GFLOP/s of
(i) ``Projector.sample`` at every rotation + ``estep.squared_differences`` and (ii) the polar
E-step, plus the machine's float32 GEMM rate for comparable shapes, all in the same run.

Run: ``python benchmarks/estep_polar.py [--particles 64] [--d-rho 1.0] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np

from subtomo_nb.fourier.grid import shell_index
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.healpix import sampling_directions
from subtomo_nb.geometry.translations import translation_grid
from subtomo_nb.refine import estep
from subtomo_nb.refine.polar import (
    PolarGrid,
    polar_flops,
    polar_particle_terms,
    polar_reference,
    polar_squared_differences,
)


def _best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _gemm_rate(m: int, k: int, n: int, repeat: int) -> float:
    """float32 GEMM rate (GFLOP/s) of an (m x k) @ (k x n) product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    t, _ = _best_time(lambda: a @ b, repeat)
    return 2.0 * m * k * n / t / 1e9


def _cgemm_rate(batch: int, m: int, k: int, n: int, repeat: int) -> float:
    """complex64 batched GEMM rate (real GFLOP/s, 8 per complex multiply-add)."""
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((batch, m, k)) + 1j * rng.standard_normal((batch, m, k))).astype(np.complex64)
    b = (rng.standard_normal((batch, k, n)) + 1j * rng.standard_normal((batch, k, n))).astype(np.complex64)
    t, _ = _best_time(lambda: np.matmul(a, b), repeat)
    return 8.0 * batch * m * k * n / t / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--r-max", type=float, default=15.0)
    ap.add_argument("--particles", type=int, default=64)
    ap.add_argument("--psi-step", type=float, default=15.0)
    ap.add_argument("--d-rho", type=float, default=1.0, help="polar ring spacing in rho and z")
    ap.add_argument("--batch", type=int, default=16, help="particles per batch of the exact E-step")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    n, P = args.box, args.particles
    rng = np.random.default_rng(0)

    # reference: smooth random-phase map; particles: random complex data with a wedge
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    ref = np.zeros((n, n, n))
    for p in rng.uniform(-n / 4, n / 4, (12, 3)):
        ref += np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / 8.0)
    proj = Projector(ref.astype(np.float32))
    half = (n, n, n // 2 + 1)
    data = (rng.standard_normal((P,) + half) + 1j * rng.standard_normal((P,) + half)).astype(np.complex64)
    kz = np.fft.fftfreq(n, 1.0 / n)[:, None, None]
    kx = np.arange(n // 2 + 1)[None, None, :]
    mult = np.broadcast_to(np.where(np.abs(kz) <= np.tan(np.radians(60)) * kx + 0.5, 20.0, 0.0), half)
    ctf2 = (mult * 0.5).astype(np.float32)
    mult = mult.astype(np.float32)
    sigma2 = np.ones(n // 2 + 1, dtype=np.float32)

    rot, tilt, _ = sampling_directions(2, "C6")
    dirs = np.stack([rot, tilt], axis=-1)
    t_all = translation_grid(5.0, 1.0, 1.0)
    shifts = t_all[np.argsort(np.sum(t_all ** 2, axis=1), kind="stable")[:81]].astype(np.float32)
    T, D = shifts.shape[0], dirs.shape[0]

    grid = PolarGrid(n, args.r_max, args.psi_step, d_rho=args.d_rho, d_z=args.d_rho)
    R = D * grid.n_psi
    kc, wc, idx = grid.cartesian_points()
    K = kc.shape[0]
    print(f"box {n}, r_max {args.r_max}, {D} directions x {grid.n_psi} psi = {R} rotations, "
          f"{T} translations ({len(np.unique(shifts[:, :2], axis=0))} distinct in-plane), {P} particles")
    print(f"Cartesian points K = {K}; polar: {grid.n_rings} rings, {grid.n_points} ring points "
          f"(d_rho = d_z = {args.d_rho}), core {grid.core_points.shape[0]} points (shells <= {grid.core_shell})")

    # (i) exact: Projector.sample for every rotation + two GEMMs per particle batch
    A = euler_to_matrix(np.repeat(rot, grid.n_psi), np.repeat(tilt, grid.n_psi), np.tile(grid.psi_deg, D))
    kc32 = kc.astype(np.float32)
    sh = shell_index(n).ravel()[idx]
    s2 = (sigma2[sh] / wc).astype(np.float32)
    t_sample, V = _best_time(lambda: proj.sample(A.astype(np.float32), kc32), args.repeat)
    phases = estep.phase_factors(kc32, shifts, n).astype(np.complex64)

    def exact() -> np.ndarray:
        out = np.empty((P, R, T), dtype=np.float32)
        for p0 in range(0, P, args.batch):
            p1 = min(P, p0 + args.batch)
            terms = estep.particle_terms(data.reshape(P, -1)[p0:p1, idx],
                                         np.broadcast_to(ctf2.ravel()[idx], (p1 - p0, K)),
                                         np.broadcast_to(mult.ravel()[idx], (p1 - p0, K)), s2)
            out[p0:p1] = estep.squared_differences(terms, V, phases)
        return out

    t_exact, d2_exact = _best_time(exact, args.repeat)
    flops_exact = 2.0 * P * K * R + 2.0 * P * T * 2 * K * R
    print(f"(i)  exact:  Projector.sample {t_sample:7.3f} s ({t_sample / (R * K) * 1e9:.0f} ns/point), "
          f"GEMM E-step {t_exact:7.3f} s = {flops_exact / 1e9:.1f} GFLOP -> {flops_exact / t_exact / 1e9:.1f} GFLOP/s; "
          f"total {t_sample + t_exact:.3f} s")

    # (ii) polar
    t_pref, pref = _best_time(lambda: polar_reference(proj, dirs, grid), args.repeat)
    t_pterm, terms = _best_time(lambda: polar_particle_terms(data, ctf2, mult, sigma2, grid, shifts), args.repeat)
    t_polar, d2_polar = _best_time(lambda: polar_squared_differences(terms, pref), args.repeat)
    Kc = grid.core_points.shape[0]
    flops_polar = polar_flops(grid, P, D, T) + 2.0 * P * Kc * R + 4.0 * P * T * Kc * R
    print(f"(ii) polar:  polar_reference {t_pref:7.3f} s, polar_particle_terms {t_pterm:7.3f} s, "
          f"polar_squared_differences {t_polar:7.3f} s = {flops_polar / 1e9:.1f} GFLOP (GEMM) -> "
          f"{flops_polar / t_polar / 1e9:.1f} GFLOP/s effective; total {t_pref + t_pterm + t_polar:.3f} s")
    print(f"     speed-up: reference {t_sample / t_pref:.1f}x, diff2 {t_exact / t_polar:.1f}x, "
          f"total {(t_sample + t_exact) / (t_pref + t_pterm + t_polar):.1f}x; "
          f"exact-equivalent rate of the polar diff2 {flops_exact / t_polar / 1e9:.0f} GFLOP/s")
    e = d2_exact.reshape(P, -1)
    q = d2_polar.reshape(P, -1)
    cc = [np.corrcoef(e[p] - e[p].min(), q[p] - q[p].min())[0, 1] for p in range(P)]
    same = np.mean(np.argmin(e, axis=1) == np.argmin(q, axis=1))
    print(f"     agreement on noise data: min corr {min(cc):.4f}, same argmin for {same:.0%} of particles")

    # machine GEMM rates for comparable shapes
    bb = min(args.batch, P)
    print(f"float32 GEMM ({bb * T} x {2 * K}) @ ({2 * K} x {R}): {_gemm_rate(bb * T, 2 * K, R, args.repeat):.1f} GFLOP/s; "
          f"complex64 batched ({grid.n_freq} x ({bb * T} x {grid.n_rings}) @ ({grid.n_rings} x {D})): "
          f"{_cgemm_rate(grid.n_freq, bb * T, grid.n_rings, D, args.repeat):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
