"""Lower bound on the VDAM initial model's time: its coarse-pass matrix products at the machine's GEMM rate.

Usage::

    python benchmarks/initial_model_bound.py --project tut2        # the tutorial job on a simulated project

RELION's VDAM E-step scores every particle of a mini-batch against every reachable coarse
orientation and translation at the current image size (relion-conventions.md §6.8, §6.9, §8).
Those scores are one real matrix product per batch, ``(P·T × 2K) · (2K × R)`` plus the
``(P × K) · (K × R)`` reference-power term, i.e. ``4KRT + 2KR`` flops per particle, with

- ``R`` the coarse orientations the tilt prior reaches (``batch_orientation_prior`` of the
  particles' tilt priors; in C1 by default, as "Run in C1 and apply symmetry later"),
- ``T`` the coarse translations (``Sampling.translations_px``),
- ``K`` the Fourier points of the coarse size (``FourierSelection``), here the whole box.

The script sums that count over the mini-batches of one HEALPix order (the schedule's subset
sizes, :func:`subtomo_nb.initial_model.schedules.subset_size`), measures this machine's float32
GEMM rate on the same shapes, and prints the time those products alone need. Everything else
(interpolating the reference, weights, the fine pass, back-projection, the M-step) comes on top.

The sampling of the order-3 phase (its translations, where it starts) is an input: the defaults
are what the tutorial job's own auto-sampling chose in the measured runs (offsets 0.77 px in
0.5 px steps from mini-batch 30, benchmarks/RESULTS.md). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def gemm_rate(rows: int, inner: int, cols: int, repeats: int = 5) -> float:
    """Measured float32 ``(rows × inner) · (inner × cols)`` rate (flop/s), best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, inner), dtype=np.float32)
    b = rng.standard_normal((cols, inner), dtype=np.float32)
    a @ b.T
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - t0)
    return 2.0 * rows * inner * cols / best


def main(argv: list[str] | None = None) -> None:
    from subtomo_nb.initial_model.schedules import iteration_budget, subset_size
    from subtomo_nb.refine.expectation import ROTATION_CHUNK, FourierSelection
    from subtomo_nb.refine.sampling import Sampling, batch_orientation_prior

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, required=True, help="simulated project (Extract/job002 at bin 4)")
    ap.add_argument("--iter", type=int, default=100, help="VDAM mini-batches (--iter)")
    ap.add_argument("--healpix_order", type=int, default=3, help="coarse HEALPix order of the phase")
    ap.add_argument("--from_iter", type=int, default=30, help="first mini-batch at that order")
    ap.add_argument("--offset_range_px", type=float, default=0.7739, help="coarse offset range (pixels)")
    ap.add_argument("--offset_step_px", type=float, default=0.5, help="coarse offset step (pixels)")
    ap.add_argument("--sigma_tilt", type=float, default=10.0, help="tilt prior width (degrees)")
    ap.add_argument("--sym", default="C1", help="symmetry during VDAM (C1: 'Run in C1 and apply symmetry later')")
    ap.add_argument("--batch", type=int, default=16, help="particles per E-step batch")
    a = ap.parse_args(argv)

    import starfile

    star = starfile.read(a.project / "Extract" / "job002" / "particles.star")
    tab, optics = star["particles"], star["optics"]
    pix = float(optics["rlnImagePixelSize"].iloc[0])
    box = int(optics["rlnImageSize"].iloc[0])
    n = len(tab)
    tilt_prior = tab["rlnAngleTiltPrior"].to_numpy(float) if "rlnAngleTiltPrior" in tab else np.full(n, 90.0)

    smp = Sampling(healpix_order=a.healpix_order, offset_range_A=a.offset_range_px * pix,
                   offset_step_A=a.offset_step_px * pix, sym=a.sym, sigma_tilt=a.sigma_tilt)
    grid = smp.grid()
    # reachable orientations per particle (one particle at a time: the smallest possible R)
    reach = np.empty(n)
    zeros = np.zeros(1)
    for i in range(n):
        ridx, _ = batch_orientation_prior(smp, grid, zeros, tilt_prior[i:i + 1], zeros)
        reach[i] = len(ridx)
    T = len(smp.translations_px(pix))
    K = len(FourierSelection.make(box, box // 2).index)
    per_particle = 4.0 * K * reach.mean() * T + 2.0 * K * reach.mean()
    budget = iteration_budget(a.iter)
    sizes = [subset_size(it, budget, n) for it in range(a.from_iter + 1, a.iter + 1)]
    flops = per_particle * sum(sizes)
    rate = gemm_rate(a.batch * T, 2 * K, ROTATION_CHUNK)
    print(f"particles {n}, box {box}, {pix:g} Å/px; HEALPix order {a.healpix_order} in {a.sym}, tilt prior "
          f"{a.sigma_tilt:g}°: {len(grid)} orientations, {reach.mean():.0f} reachable per particle (mean)")
    print(f"coarse translations T = {T}, coarse Fourier points K = {K}")
    print(f"mini-batches {a.from_iter + 1}..{a.iter}: {len(sizes)} at this order, {sum(sizes)} particle E-steps")
    print(f"coarse products: {per_particle / 1e9:.2f} GFLOP per particle, {flops / 1e12:.1f} TFLOP in all")
    print(f"float32 GEMM ({a.batch * T} × {2 * K}) · ({2 * K} × {ROTATION_CHUNK}) on this machine: "
          f"{rate / 1e9:.1f} GFLOP/s")
    print(f"lower bound for these products alone: {flops / rate:.0f} s ({flops / rate / 60:.1f} min)")


if __name__ == "__main__":
    main()
