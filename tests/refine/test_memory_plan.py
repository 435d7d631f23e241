"""The memory plan of an E-step worker: the formula's terms, the refusal, and a measured peak."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from subtomo_nb.io.errors import InputError
from subtomo_nb.refine import expectation
from subtomo_nb.refine.memory_plan import SAFETY_FRACTION, final_sampling, fourier_points, particle_bytes, plan_memory
from subtomo_nb.refine.sampling import Sampling

GiB = 1 << 30
FIRST = Sampling(healpix_order=2, offset_range_A=5 * 10.8, offset_step_A=2 * 10.8, sym="C6")


def _plan(**kw):
    args = dict(box=32, pad=2, dtype="float32", batch_size=16, particles=92, workers=1, first=FIRST,
                auto_local_healpix_order=4, pixel_size_A=10.8, first_radius=32 * 10.8 / 50)
    args.update(kw)
    return plan_memory(**args)


def test_terms_follow_the_formula():
    plan = _plan()
    N, m = 32, 64
    half = lambda n: n * n * (n // 2 + 1)  # noqa: E731
    for it in (plan.first, plan.final):
        assert it.terms["particles"] == 92 * half(N) * 16          # complex64 data + float32 CTF² and multiplicity
        assert it.terms["projectors"] == 2 * 2 * half(m) * 8
        assert it.terms["back-projector"] == half(m) * 12
        assert it.terms["batch in flight"] == 16 * half(N) * 16                # one batch, in flight
        assert it.working == it.peak - it.terms["particles"]
    # the final iteration: full box, auto_local_healpix_order, local searches of 2 x the fine step
    assert plan.final.healpix_order == 4 and plan.final.coarse_radius == plan.final.fine_radius == 16
    assert final_sampling(FIRST, 4).sigma_rot == pytest.approx(2 * 360 / (6 * 2 ** 5))
    assert plan.final.reached < plan.final.orientations and plan.first.reached == plan.first.orientations
    Kf = fourier_points(16)
    fine = max(expectation.FINE_BUDGET, 8 * (min(expectation.MAX_SIGNIFICANT_COARSE,
                                                 plan.final.reached) + plan.final.translations) * Kf)
    assert plan.final.terms["fine pass"] <= 2 * fine * 28
    assert plan.peak == max(plan.first.peak, plan.final.peak) == sum(plan.final.terms.values())


def test_more_workers_keep_fewer_particles_each():
    """Batches are placed round-robin: a worker serves ceil(batches / workers) batches, not ceil(n / workers)."""
    one, four = _plan(particles=1000), _plan(particles=1000, workers=4)
    # half-sets of 500: 2 x ceil(500 / 16) = 64 batches, 16 per worker, 256 particles
    assert (one.particles, four.particles) == (1000, 256)
    assert four.final.terms["particles"] * 1000 == one.final.terms["particles"] * 256
    # 2 x ceil(50 / 16) = 8 batches on 3 workers: one serves 3 batches (48 particles), not ceil(100 / 3) = 34
    assert _plan(particles=100, workers=3).particles == 48
    assert _plan(particles=20, workers=1).particles == 20                  # never more than the job's particles
    assert one.resident == 1000 and one.resident_bytes is None         # memory unknown: all resident


def _big(box: int, available: float | None, particles: int = 20_000, dtype: str = "float32"):
    pix = 2.0
    first = Sampling(healpix_order=2, offset_range_A=5 * pix, offset_step_A=2 * pix, sym="C1")
    return plan_memory(box=box, pad=2, dtype=dtype, batch_size=16, particles=particles, workers=1, first=first,
                       auto_local_healpix_order=4, pixel_size_A=pix, first_radius=box * pix / 30,
                       available=None if available is None else int(available), where="GPU free")


def test_particles_that_do_not_fit_are_streamed_not_refused():
    """20,000 particles at box 96 (134 GiB of transforms): with 80 GB the working set fits,
    the particles that fit in what is left stay, the others are re-read and copied every iteration."""
    avail = 80e9
    plan = _big(96, avail)
    plan.check()                                                       # not refused
    one = 96 * 96 * 49 * 16
    assert plan.per_particle == particle_bytes(96, "float32") == one
    assert plan.working < avail and 20_000 * one > avail               # the particles alone would not fit
    expect = (int(avail) - plan.working - int(SAFETY_FRACTION * avail)) // one
    assert 0 < plan.resident == expect < 20_000
    assert plan.streamed == 20_000 - expect
    assert plan.resident_bytes == expect * one
    assert plan.peak == plan.working + expect * one <= avail           # the plan fits what it says
    last = plan.lines()[-1]
    assert f"{expect} of 20000 particles stay on the GPU" in last
    assert f"{20_000 - expect} are re-read from disk and copied to the GPU every iteration (one copy per particle per iteration" in last
    # all resident when they fit, and when the memory is unknown
    small = _big(96, avail, particles=1000)
    assert small.resident == 1000 and small.streamed == 0 and small.resident_bytes == 1000 * one
    assert "re-read" not in small.lines()[-1]
    assert _big(96, None).resident == 20_000


def test_box_256_is_refused_by_its_working_set_only():
    """20,000 particles at box 256 with 80 GB: the particles (2.5 TiB) would be streamed; what does not
    fit is the final iteration's working set (the fine pass of a particle with broad posteriors at the
    full box), which no number of particles per worker changes."""
    plan = _big(256, 80e9)
    assert plan.final.working > 80e9 and plan.resident == 0
    assert _big(256, 80e9, particles=1).working == plan.working
    with pytest.raises(InputError, match=r"final iteration's working set .* \(largest: fine pass"):
        plan.check()
    with pytest.raises(InputError, match=r"use a smaller batch size, float32 or more GPUs$"):
        _big(256, 80e9, dtype="float64").check()


@pytest.mark.parametrize("free, fits", [(64 * GiB, True), (256 << 20, False), (None, True)])
def test_fits_or_refuses_in_one_line(free, fits):
    plan = _plan(available=free, where="GPU free")
    assert plan.fits is fits
    if fits:
        plan.check()
        return
    with pytest.raises(InputError) as info:
        plan.check()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("field memory: the final iteration's working set needs about ")
    assert msg.endswith("is available (GPU free); use a smaller batch size or more GPUs")
    last = plan.lines()[-1]
    assert last.endswith(" do not fit") and "does not fit" not in last


def test_plan_lines_name_box_sampling_batch_and_final_peak():
    lines = _plan(available=8 * GiB, where="GPU free").lines()
    assert lines[0] == ("memory plan per worker (1 worker): box 32 px, padding 2, float32, batch size 16, "
                        "92 particles")
    assert lines[1].startswith("  first iteration: HEALPix order 2 (7.50°), 672 of 672 orientations per batch, "
                               "81 translations, radius 6.912 px: working set ")
    assert lines[2].startswith("  final iteration: HEALPix order 4 (1.88°), ") and "full box: working set" in lines[2]
    assert lines[3].startswith("  available: 8.0 GiB GPU free; working set ")
    assert lines[3].endswith(": 92 of 92 particles stay on the GPU (24.4 MiB), copied there once")


def test_plan_bounds_the_measured_peak():
    """benchmarks/memory_plan_check.py on a small case: the plan is not below tracemalloc's peak."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_plan_check.py"
    spec = importlib.util.spec_from_file_location("memory_plan_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    measured, planned = mod.measure(box=16, batch=4, particles=8, order=1)
    assert measured <= planned <= 3 * measured


def test_the_driver_term_shrinks_the_budget_on_cupy_only():
    """On cupy the driver's M-step (two padded back-projectors + reconstruction temporaries) is in the working set."""
    m = 64
    half_m = m * m * (m // 2 + 1)
    driver = 2 * half_m * 12 + 4 * half_m * 8
    probe = _plan()
    one = particle_bytes(32, "float32")
    avail = int((probe.working + driver + 1000 * one) / (1 - SAFETY_FRACTION)) + 1
    host = _plan(particles=10_000, available=avail, where="GPU free")
    gpu = _plan(particles=10_000, available=avail, where="GPU free", driver=True)
    assert host.final.terms["driver"] == 0 and gpu.final.terms["driver"] == gpu.first.terms["driver"] == driver
    assert gpu.working == host.working + driver
    room = avail - host.working - int(SAFETY_FRACTION * avail)
    assert host.resident == room // one and gpu.resident == (room - driver) // one >= 1000

@pytest.mark.parametrize("dask, where, says", [
    (False, "GPU free", "are re-read from disk and copied to the GPU every iteration"),
    (True, "GPU free", "are kept in the worker's host memory and copied to its GPU every iteration"),
    (False, "host RAM per worker", "are re-read from disk every iteration"),
    (True, "host RAM per worker", "all 2000 particles stay in the worker's memory"),
])
def test_the_plan_says_where_the_particles_beyond_the_budget_are(dask, where, says):
    probe = _plan(particles=2000, where=where, dask=dask)
    avail = int((probe.working + 30 * probe.per_particle) / (1 - SAFETY_FRACTION)) + 1
    assert says in _plan(particles=2000, available=avail, where=where, dask=dask).lines()[-1]
