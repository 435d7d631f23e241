"""The E-step's coarse products on a backend, next to a bare matrix product of the same shapes.

For one tutorial-size batch (box 32, 16 particles, the tutorial's C6 HEALPix order 2 grid of 672
orientations, 81 translations, every Fourier point of the full box) it times
:func:`subtomo_nb.refine.estep.squared_differences` chunk by chunk as the coarse pass runs it
(``ROTATION_CHUNK`` orientations at a time; the particles' translated terms formed once), and
then the two bare matrix products of the same shapes (``(P, K)·(K, R)`` and ``(R, 2K)·(2K, P·T)``
in float32: cuBLAS through cupy on the GPU, BLAS through numpy on the CPU). One line per figure:

    estep coarse products: 12.3 TFLOP/s (...)
    bare matmul, same shapes: 20.1 TFLOP/s
    ratio: 0.61

    python benchmarks/estep_gpu.py [--backend cupy] [--batch 16] [--orientations 672] [--repeat 20]

The issue's aim: at least 50 % of the bare rate on a GPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from subtomo_nb.backend import Backend, get_backend
from subtomo_nb.refine.estep import ReferenceTerms, particle_terms, phase_factors, squared_differences, translated_terms
from subtomo_nb.refine.expectation import FourierSelection
from subtomo_nb.refine.iteration_cache import ROTATION_CHUNK
from subtomo_nb.refine.sampling import Sampling


def _sync(be: Backend) -> None:
    if be.name == "cupy":
        import cupy  # noqa: PLC0415

        cupy.cuda.Device().synchronize()


def _time(be: Backend, fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``fn`` over ``repeat`` runs after two warm-ups."""
    for _ in range(2):
        fn()
    _sync(be)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(be)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(backend: str = "cupy", batch: int = 16, box: int = 32, orientations: int | None = None,
        pixel_A: float = 10.8, repeat: int = 20) -> dict[str, float]:
    """Achieved and bare rates (TFLOP/s) of the coarse products of one batch; see the module docstring."""
    be = get_backend(backend)
    xp = be.xp
    rng = np.random.default_rng(0)
    sel = FourierSelection.make(box, box / 2)
    K = len(sel.index)
    sampling = Sampling(healpix_order=2, offset_range_A=5 * pixel_A, offset_step_A=2 * pixel_A, sym="C6")
    R = orientations or len(sampling.grid().rot) * sampling.grid().n_psi
    shifts = sampling.translations_px(pixel_A)
    T, P = len(shifts), int(batch)
    up = lambda a, kind="particles": be.to_device(np.ascontiguousarray(a), kind)  # noqa: E731
    X = up((rng.standard_normal((P, K)) + 1j * rng.standard_normal((P, K))).astype(np.complex64))
    W = up(rng.uniform(0.1, 1, (P, K)).astype(np.float32))
    M = up(np.ones((P, K), dtype=np.float32))
    noise = up(np.ones(K, dtype=np.float32), "metadata")
    ref = ReferenceTerms(stacked=up(rng.standard_normal((R, 2 * K)).astype(np.float32), "reference"),
                         power=up(rng.uniform(0, 1, (R, K)).astype(np.float32), "reference"))
    phases = phase_factors(up(sel.points.astype(np.float32), "metadata"), up(shifts.astype(np.float32), "metadata"),
                           box)
    terms = particle_terms(X, W, M, noise)
    lhs = translated_terms(terms, phases)                          # (P·T, 2K), once per batch

    def coarse() -> None:
        for s in range(0, R, ROTATION_CHUNK):
            squared_differences(terms, ref.rows(slice(s, min(s + ROTATION_CHUNK, R))), phases, lhs=lhs)

    a, powT = terms.a, xp.asarray(ref.power.T, copy=True)
    stacked, lhsT = ref.stacked, xp.asarray(lhs.T, copy=True)

    def bare() -> None:
        a @ powT
        stacked @ lhsT

    flop = 2.0 * P * K * R + 2.0 * R * (2 * K) * (P * T)
    t_coarse, t_bare = _time(be, coarse, repeat), _time(be, bare, repeat)
    return {"P": P, "K": K, "R": R, "T": T, "achieved": flop / t_coarse / 1e12, "bare": flop / t_bare / 1e12,
            "seconds": t_coarse, "flop": flop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cupy", choices=("cupy", "numpy", "strict"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--orientations", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    r = run(a.backend, batch=a.batch, orientations=a.orientations, repeat=a.repeat)
    lib = "cuBLAS" if a.backend == "cupy" else "BLAS"
    print(f"estep coarse products ({a.backend}; P={r['P']}, K={r['K']}, R={r['R']}, T={r['T']}; "
          f"{r['flop'] / 1e9:.1f} GFLOP in {r['seconds'] * 1e3:.2f} ms): {r['achieved']:.3f} TFLOP/s")
    print(f"bare matmul, same shapes ({lib}): {r['bare']:.3f} TFLOP/s")
    print(f"ratio estep / {lib}: {r['achieved'] / r['bare']:.2f}")


if __name__ == "__main__":
    main()
