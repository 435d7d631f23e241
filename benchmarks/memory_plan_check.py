"""The memory plan's estimate against the peak measured on the CPU (tracemalloc) for one small case.

One worker's iteration on the numpy backend, traced from the start: the particles are made, the
projector of each half-set's reference is built, and every batch of both half-sets runs through
``expectation_batch`` into a back-projector with the iteration's cache, as a worker does. The
peak that ``tracemalloc`` reports (numpy registers its buffers with it) is set beside
:func:`subtomo_nb.refine.memory_plan.plan_memory`'s estimate of the same iteration: the plan must
not be below the measurement (the ratio, estimate / measured, is printed).

    PYTHONPATH=. python benchmarks/memory_plan_check.py [--box 24] [--batch 8] [--particles 16] [--order 1]
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.refine.expectation import EStepSettings, IterationCache, ParticleBatch, expectation_batch
from subtomo_nb.refine.memory_plan import format_bytes, plan_memory
from subtomo_nb.refine.sampling import Sampling


def measure(box: int, batch: int, particles: int, order: int, pad: float = 2, pixel_A: float = 10.0,
            seed: int = 0) -> tuple[int, int]:
    """``(measured peak, planned peak)`` in bytes of one global-search iteration, both half-sets, one worker."""
    sampling = Sampling(healpix_order=order, offset_range_A=2 * pixel_A, offset_step_A=pixel_A, sym="C1")
    radius = box / 2
    settings = EStepSettings(pixel_size_A=pixel_A, coarse_radius=radius, fine_radius=radius, sigma_offset_A=2 * pixel_A)
    rng = np.random.default_rng(seed)
    shape = (particles, box, box, box // 2 + 1)
    tracemalloc.start()
    data = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    ctf2 = np.ones(shape, dtype=np.float32)
    mult = np.ones(shape, dtype=np.float32)
    sigma2 = np.ones(box // 2 + 1)
    held = []       # a worker keeps both half-sets' projectors and caches for the iteration
    for half in range(2):
        projector = Projector(rng.standard_normal((box, box, box)).astype(np.float32), pad=pad)
        cache = IterationCache()
        held.append((projector, cache))
        for start in range(0, particles, batch):
            part = slice(start, start + batch)
            bp = BackProjector(box, pad=pad, r_max=radius, dtype=np.float32)
            pb = ParticleBatch.of(data[part], ctf2[part], mult[part])
            priors = np.zeros((len(pb), 3))
            task = cache.for_task()
            expectation_batch(projector, pb, sigma2, sampling, priors, settings, backprojector=bp, cache=task)
            task.flush()
            task.share_into(cache)
            del bp, task
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    plan = plan_memory(box=box, pad=pad, dtype="float32", batch_size=batch, particles=particles, workers=1,
                       first=sampling, auto_local_healpix_order=order, pixel_size_A=pixel_A, first_radius=radius)
    return int(peak), int(plan.first.peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--order", type=int, default=1)
    a = ap.parse_args()
    measured, planned = measure(a.box, a.batch, a.particles, a.order)
    print(f"box {a.box}, batch {a.batch}, {a.particles} particles, HEALPix order {a.order}: measured peak "
          f"{format_bytes(measured)} (tracemalloc), planned {format_bytes(planned)}, ratio {planned / measured:.2f}")


if __name__ == "__main__":
    main()
