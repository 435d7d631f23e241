"""The memory plan's particle budget reaches the engine: what fits stays, the rest is re-read.

:func:`subtomo_nb.jobs.runners.memory_plan` on an auto-refine job of the tiny project (92
particles, box 32) with a (given) available memory whose working set fits but only part of the
particles: the job is not refused, ``run.out``'s lines say how many particles stay and how many are
re-read every iteration, and the job's transform cache keeps exactly that many.
"""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.io.errors import InputError
from subtomo_nb.jobs.runners import memory_plan
from subtomo_nb.refine.autorefine import AutoRefine, RefineOptions
from subtomo_nb.refine.memory_plan import SAFETY_FRACTION
from subtomo_nb.tasks.particle_data import TRANSFORM_CACHE_BYTES


def _job(tiny_project, tiny_extract_3d, out) -> AutoRefine:
    opts = RefineOptions(particles=tiny_extract_3d, reference=tiny_project["map"], output_root=out / "run",
                         ini_high=50.0, sym="C6", particle_diameter=230.0, healpix_order=1, offset_range_px=4.0,
                         offset_step_px=2.0, auto_iter_max=2, batch_size=12, random_seed=1)
    return AutoRefine.from_options(opts)


def _plan(job, available):
    lines: list[str] = []
    plan = memory_plan(job, {}, None, lambda p: lines.append(p.message), available=available)
    return plan, lines


def test_the_plan_budget_goes_to_the_transform_cache(tiny_project, tiny_extract_3d, tmp_path, monkeypatch):
    import subtomo_nb.refine.memory_plan as memory_plan_module

    monkeypatch.delenv("SUBTOMO_BACKEND", raising=False)
    monkeypatch.setattr(memory_plan_module, "host_memory", lambda: None)
    job = _job(tiny_project, tiny_extract_3d, tmp_path)
    assert job.source.transforms.max_bytes == TRANSFORM_CACHE_BYTES and job.opts.device_cache_bytes is None
    probe, _ = _plan(job, None)                       # unknown memory: every particle, the default budget
    assert probe.resident == 92 and probe.resident_bytes is None
    assert job.source.transforms.max_bytes == TRANSFORM_CACHE_BYTES
    one = probe.per_particle
    # room for the working set, the margin and 30 particles (and a little)
    available = int((probe.working + 30 * one + one // 2) / (1 - SAFETY_FRACTION)) + 1
    plan, lines = _plan(job, available)
    assert plan.resident == 30 and plan.streamed == 62
    assert plan.resident_bytes == 30 * one
    assert lines[-1].endswith(f": 30 of 92 particles stay in memory ({30 * one / 2**20:.1f} MiB), copied there "
                              f"once; 62 are re-read from disk every iteration (one copy per particle per "
                              f"iteration, {62 * one / 2**20:.1f} MiB)")
    # the engine keeps what the plan says (serial path: the job's TransformCache)
    assert job.opts.device_cache_bytes == job.source.cache_bytes == job.source.transforms.max_bytes == 30 * one
    rows = np.arange(92)
    for start in range(0, 92, 12):
        job.source.transforms.raw(rows[start:start + 12])
    assert len(job.source.transforms._entries) == 30 and job.source.transforms.nbytes == 30 * one


def test_a_working_set_that_cannot_fit_is_refused(tiny_project, tiny_extract_3d, tmp_path, monkeypatch):
    import subtomo_nb.refine.memory_plan as memory_plan_module

    monkeypatch.delenv("SUBTOMO_BACKEND", raising=False)
    monkeypatch.setattr(memory_plan_module, "host_memory", lambda: None)
    job = _job(tiny_project, tiny_extract_3d, tmp_path)
    probe, _ = _plan(job, None)
    with pytest.raises(InputError, match=r"working set needs about .* use a smaller batch size or more GPUs$"):
        _plan(job, probe.working)                     # the working set, but not the margin
    assert job.source.transforms.max_bytes == TRANSFORM_CACHE_BYTES       # untouched
