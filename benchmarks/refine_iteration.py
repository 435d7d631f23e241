"""3D auto-refine benchmark: time per iteration, and the E-step's rate next to this machine's GEMM rate.

Usage::

    python benchmarks/refine_iteration.py                         # tiny simulated project (noisy)
    python benchmarks/refine_iteration.py --particles P.star --ref MAP.mrc [--n 128] [--iterations 3]

Part 1 runs ``--iterations`` auto-refine iterations (the last one is the final, full-resolution
one) and prints each one's wall time. Part 2 runs the E-step of one half-set once more (first
iteration, global search, HEALPix order 2) while recording every matrix product it makes
(:data:`subtomo_nb.refine.estep.GEMM_RECORDER`), then replays products of exactly those shapes and
dtypes on random data. It prints the E-step's matrix-product work divided by the E-step's whole
wall time (interpolation, weights, sums and back-projection included) next to the machine's rate
for the same products, measured in the same run: for the process's first E-step (reading the
particles) and for the same E-step run again, as each later iteration of a job runs (particles
kept in memory). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def _flops(a_shape: tuple, b_shape: tuple, dtype: str) -> float:
    batch = int(np.prod(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))) if len(a_shape) > 2 or len(b_shape) > 2 else 1
    m, k, n = a_shape[-2], a_shape[-1], b_shape[-1]
    return (8.0 if "complex" in dtype else 2.0) * batch * m * n * k


def _replay(records: list, repeats: int = 1) -> float:
    """Seconds to run matrix products of the recorded shapes (each as often as recorded)."""
    rng = np.random.default_rng(0)
    total = 0.0
    for (a_shape, b_shape, dtype), count in Counter(records).items():
        dt = np.dtype(dtype)
        real = np.float32 if dt in (np.float32, np.complex64) else np.float64
        a = rng.standard_normal(a_shape).astype(real)
        b = rng.standard_normal(b_shape).astype(real)
        if dt.kind == "c":
            a = a + 1j * rng.standard_normal(a_shape).astype(real)
            b = b + 1j * rng.standard_normal(b_shape).astype(real)
        a @ b  # warm up
        t0 = time.perf_counter()
        for _ in range(count * repeats):
            a @ b
        total += (time.perf_counter() - t0) / repeats
    return total


def main() -> None:
    from subtomo_nb.io.star import read_star, write_star
    from subtomo_nb.refine import estep
    from subtomo_nb.refine.autorefine import AutoRefine, RefineOptions
    from subtomo_nb.refine.executor import SerialExecutor
    from subtomo_nb.refine.outputs import write_iteration

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", help="particles STAR (3D pseudo-subtomograms); default: simulate a tiny project")
    ap.add_argument("--ref", help="reference map (default: the simulated ground truth)")
    ap.add_argument("--n", type=int, default=0, help="use the first N particles (0: all)")
    ap.add_argument("--iterations", type=int, default=3, help="iterations of part 1 (0: skip)")
    ap.add_argument("--sym", default="C6")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    from subtomo_nb._memory import keep_freed_memory

    keep_freed_memory()   # as the CLI and job runner do (subtomo_nb._memory)

    work = Path(args.out or tempfile.mkdtemp(prefix="refine_bench_"))
    if args.particles is None:
        from subtomo_nb.simulate import simulate_tiny_project
        from subtomo_nb.tasks.extract import extract_subtomos

        sim = simulate_tiny_project(work / "project", seed=0)
        args.particles = str(extract_subtomos(sim["optimisation_set"], None, work / "project" / "Extract",
                                              binning=4, box=32, stack2d=False))
        args.ref = args.ref or str(sim["map"])
    if args.n:
        star = read_star(args.particles)
        star["particles"] = star["particles"].iloc[: args.n].reset_index(drop=True)
        sub = Path(args.particles).with_name(f"bench_first{args.n}.star")
        write_star(sub, star)
        args.particles = str(sub)
    n = len(read_star(args.particles)["particles"])
    base = dict(particles=args.particles, reference=args.ref, ini_high=50.0, sym=args.sym, particle_diameter=230.0,
                auto_ignore_angles=True, auto_resol_angles=True, random_seed=1)
    print(f"particles: {n}  (box and pixel from {args.particles})")

    if args.iterations:
        times = []
        opts = RefineOptions(output_root=work / "part1" / "run", auto_iter_max=args.iterations, **base)
        t0 = time.perf_counter()
        AutoRefine.from_options(opts, progress=lambda e: times.append(e) if e.get("kind") == "iteration" else None).run()
        print(f"part 1: {len(times)} iterations in {time.perf_counter() - t0:.1f} s")
        for e in times:
            print(f"  iteration {e['iteration']}: {e['seconds']:.1f} s, HEALPix order {e['healpix_order']}, "
                  f"resolution {e['resolution_A']:.1f} Å")

    job = AutoRefine.from_options(RefineOptions(output_root=work / "part2" / "run", **base))
    write_iteration(job, final=False, initial=True)
    job.state.iteration = 1
    job._update_sizes()
    # twice: "first" is the process's first E-step (particles read from disk, fresh memory for
    # the iteration's caches, compiled kernels loaded); "again" is the same E-step once more, as
    # every later iteration of a job runs (particles kept in memory, freed memory reused)
    runs = []
    for label in ("first", "again"):
        estep.GEMM_RECORDER = []
        t0 = time.perf_counter()
        SerialExecutor().run(job.half_request(final=False, halves=job.halves[:1]))
        runs.append((label, time.perf_counter() - t0, estep.GEMM_RECORDER))
        estep.GEMM_RECORDER = None
    records = runs[-1][2]
    flops = sum(_flops(*r) for r in records)
    t_gemm = _replay(records)
    print(f"part 2: E-step of half-set 1 ({len(job.halves[0].rows)} particles, iteration 1, "
          f"HEALPix order {job.state.sampling.healpix_order}, image size {job.state.current_size})")
    print(f"  matrix products {len(records)} calls, {flops / 1e9:.1f} GFLOP; replayed: {t_gemm:.2f} s, "
          f"{flops / t_gemm / 1e9:.1f} GFLOP/s")
    for label, t_estep, rec in runs:
        print(f"  E-step ({label}) wall time {t_estep:.2f} s, {len(rec)} products: rate "
              f"{sum(_flops(*r) for r in rec) / t_estep / 1e9:.1f} GFLOP/s; ratio {t_gemm / t_estep:.0%}")

if __name__ == "__main__":
    main()
