"""The memory plan of an E-step worker: the formula's terms, the refusal, and a measured peak."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from subtomo_nb.io.errors import InputError
from subtomo_nb.refine import expectation
from subtomo_nb.refine.memory_plan import final_sampling, fourier_points, plan_memory
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
    one, four = _plan(particles=1000), _plan(particles=1000, workers=4)
    assert (one.particles, four.particles) == (1000, 250)
    assert four.final.terms["particles"] * 4 == one.final.terms["particles"]


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
    assert "\n" not in msg and msg.startswith("field memory: the final iteration needs about ")
    assert msg.endswith("is available (GPU free); use a smaller batch size, fewer particles per worker (more "
                        "workers) or more GPUs")
    assert "-- does not fit" in plan.lines()[-1]


def test_plan_lines_name_box_sampling_batch_and_final_peak():
    lines = _plan(available=8 * GiB, where="GPU free").lines()
    assert lines[0] == ("memory plan per worker (1 worker): box 32 px, padding 2, float32, batch size 16, "
                        "92 particles kept")
    assert lines[1].startswith("  first iteration: HEALPix order 2 (7.50°), 672 of 672 orientations per batch, "
                               "81 translations, radius 6.912 px: peak ")
    assert lines[2].startswith("  final iteration: HEALPix order 4 (1.88°), ") and "full box: peak" in lines[2]
    assert lines[3].startswith("  available: 8.0 GiB GPU free; final iteration at full size ")


def test_plan_bounds_the_measured_peak():
    """benchmarks/memory_plan_check.py on a small case: the plan is not below tracemalloc's peak."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_plan_check.py"
    spec = importlib.util.spec_from_file_location("memory_plan_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    measured, planned = mod.measure(box=16, batch=4, particles=8, order=1)
    assert measured <= planned <= 3 * measured
