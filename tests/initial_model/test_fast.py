"""``--fast`` (subtomo_nb's accelerated VDAM search): its rules, and a run that keeps them."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.initial_model import schedules as S
from subtomo_nb.initial_model.compare import axis_error_deg, superpose, symmetry_axes_error_deg
from subtomo_nb.initial_model.fast import FAST_INCR_SIZE, FAST_MAX_HEALPIX_ORDER, FAST_MAX_RESOLUTION_A, FastSearch
from subtomo_nb.io.mrc import read_map
from subtomo_nb.refine.poses import shell_of_resolution


def test_image_size_marches_with_the_resolution_and_stops_at_the_cap():
    """2 (maxres + 2) shells, at most the size whose Nyquist is 25 Å, at most the box."""
    f = FastSearch()
    box, pix = 32, 10.8                       # the tutorial's bin-4 box: Nyquist 21.6 Å
    cap = 2 * 14                              # ROUND(345.6 Å / 25 Å) = 14 shells
    assert [f.image_size(m, box, pix) for m in (2, 5, 9, 11, 12, 13, 16)] == [8, 14, 22, 26, cap, cap, cap]
    # a fine pixel: the 25 Å cap is 2 · ROUND(128 Å / 25 Å) = 10 pixels, below 2 (40 + 2)
    assert FastSearch().image_size(40, 64, 2.0) == 10
    assert FastSearch(max_resolution_A=1.0).image_size(40, 64, 2.0) == 64


def test_describe_names_every_change():
    lines = FastSearch(subset=200).describe(relion_subset=(200, 632), relion_max_order=3, box=32, pixel_size_A=10.8)
    text = "\n".join(lines)
    assert all(line.startswith("--fast:") for line in lines)
    assert "not RELION's" in text
    # the cap as it acts: shell ROUND(345.6 / 25) = 14, i.e. 24.7 Å
    assert f"shell + {FAST_INCR_SIZE})" in text and f"24.7 Å (shell 14, for {FAST_MAX_RESOLUTION_A:g} Å)" in text
    assert f"order at most {FAST_MAX_HEALPIX_ORDER}" in text and "order 3" in text
    assert "holds 200 particles" in text and "from 200 to 632" in text
    # a coarse pixel (Nyquist 28 Å): the 25 Å cap does nothing and is not claimed; nor a subset RELION's also has
    coarse = FastSearch(subset=92).describe(relion_subset=(92, 92), relion_max_order=3, box=32, pixel_size_A=14.0)
    assert len(coarse) == 3 and not any("no further" in x or "mini-batch holds" in x for x in coarse)


def test_fast_refuses_a_finer_starting_order(tmp_path):
    """--fast searches at order 2 at most: a starting --healpix_order above it is refused, not searched."""
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    opts = VdamOptions(particles=tmp_path / "none.star", output_root=tmp_path / "run", fast=True, healpix_order=3)
    with pytest.raises(ValueError, match="^--healpix_order 3 cannot be used with --fast"):
        InitialModel(opts, None, None)


def test_fast_with_every_rule_off_is_relions_run(tiny_extract_3d, tiny_project, tmp_path):
    """The --fast hooks are inert when their rules are off: a run with FastSearch(RELION's values) gives
    RELION's run's events and maps exactly (3 mini-batches growing from 40 towards 70, in C1)."""
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    runs = []
    for fast in (False, True):
        opts = VdamOptions(particles=tiny_extract_3d, output_root=tmp_path / f"f{fast}" / "run", nr_iter=3,
                           particle_diameter=230.0, sym="C6", sigma_tilt=10.0, random_seed=1, max_significant=5,
                           grad_write_iter=0, grad_ini_subset=40, grad_fin_subset=-1 if fast else 70,
                           project_dir=tiny_project["project_dir"], fast=fast)
        events = []
        job = InitialModel(opts, *InitialModel.read_particles(opts), progress=events.append)
        if fast:
            job.opts.grad_fin_subset = 70    # as RELION's run, now that the constructor has checked it
            job.fast = FastSearch(incr_size=10, max_resolution_A=0.0, max_healpix_order=99, subset=None)
        job.start()
        for _ in range(3):
            job.iterate()
        its = [{k: v for k, v in e.items() if not k.startswith("seconds")} for e in events if e["kind"] == "iteration"]
        runs.append((its, job.backend.to_host(job.classes_model[0].reference, "map"), job.poses.angles.copy()))
    (ev_a, map_a, ang_a), (ev_b, map_b, ang_b) = runs
    assert [e["subset"] for e in ev_a] == [50, 60, 70]              # RELION's growing mini-batches
    assert ev_a == ev_b
    np.testing.assert_array_equal(map_a, map_b)
    np.testing.assert_array_equal(ang_a, ang_b)


def test_auto_sampling_stops_at_the_fast_order_but_refines_translations(tiny_extract_3d, tmp_path):
    """With --fast the order goes 1 -> 2 and stays; the translations still follow the accuracy
    (as RELION's last global order does); without it the same calls reach order 3."""
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    orders = {}
    for fast in (False, True):
        job = InitialModel.from_options(VdamOptions(particles=tiny_extract_3d, output_root=tmp_path / f"f{fast}" / "run",
                                                    nr_iter=10, particle_diameter=230.0, fast=fast))
        s = job.state
        s.acc_rot, s.acc_trans_A, s.change_offsets_A = 1.0, 1.0, 0.5 * job.pix
        step0 = s.sampling.offset_step_A
        seen = []
        for _ in range(3):
            s.nr_iter_wo_resol_gain = 1
            job._auto_sampling()
            seen.append((s.sampling.healpix_order, s.sampling.offset_step_A / step0))
        orders[fast] = seen
    assert orders[False] == [(2, 0.5), (3, 0.25), (3, 0.125)]
    assert orders[True] == [(2, 0.5), (2, 0.25), (2, 0.125)]


def _fast_vdam(extract, project_dir, out, sym, nr_iter=10, run_in_c1=False):
    """``nr_iter`` --fast mini-batches of 40 of a tiny set's particles, with the tutorial settings."""
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    opts = VdamOptions(particles=extract, output_root=out / "run", nr_iter=nr_iter, particle_diameter=230.0,
                       sym=sym, run_in_c1=run_in_c1, sigma_tilt=10.0, random_seed=1, max_significant=5,
                       grad_write_iter=5, grad_ini_subset=40, project_dir=project_dir, fast=True)
    events = []
    job = InitialModel.from_options(opts, progress=events.append)
    job.run()
    return out, job, [e for e in events if e["kind"] == "iteration"]


FAST_ITER = 20


@pytest.fixture(scope="module")
def fast_run(tiny_extract_3d, tiny_project, tmp_path_factory):
    """Twenty --fast mini-batches of 40 of the tiny set's 92 particles, with the C6 tutorial settings (run in
    C1, then the symmetry alignment)."""
    return _fast_vdam(tiny_extract_3d, tiny_project["project_dir"], tmp_path_factory.mktemp("vdam_fast"), "C6",
                      nr_iter=FAST_ITER, run_in_c1=True)


@pytest.mark.slow
def test_fast_run_keeps_its_rules(fast_run):
    """Every mini-batch 40 particles (RELION's would grow to all 92), order <= 2, and each image
    size the rule's for the resolution the previous mini-batch reached."""
    _, job, its = fast_run
    assert [e["subset"] for e in its] == [40] * FAST_ITER
    b = S.iteration_budget(FAST_ITER)
    assert S.subset_size(FAST_ITER, b, job.n, 40) == job.n   # RELION's would hold all: what --fast changed
    assert max(e["healpix_order"] for e in its) <= FAST_MAX_HEALPIX_ORDER
    previous = [job.ini_high] + [e["resolution_A"] for e in its[:-1]]
    for e, res in zip(its, previous):
        assert e["current_size"] == job.fast.image_size(shell_of_resolution(res, job.box, job.pix), job.box, job.pix)
    assert its[0]["current_size"] < job.box                # marching: the first mini-batches search a small size
    assert its[-1]["current_size"] > its[0]["current_size"]


@pytest.mark.slow
def test_fast_run_recovers_the_particle(fast_run, tiny_project):
    """Twenty --fast mini-batches of 40 noise-free particles, grown in C1: the C6 map at <= 40 Å against the
    truth, its axis within 5° after the symmetry alignment, right hand (measured 31.4 Å, 0.19°; after 10: 43.2 Å)."""
    out, _, _ = fast_run
    ref, pix = read_map(tiny_project["map"])
    s = superpose(read_map(out / "initial_model.mrc")[0], ref, pix)
    assert s.resolution_05_A <= 40.0, s.fsc
    assert axis_error_deg(s.matrix) < 5.0
    assert s.hand == "same" and s.correlation > s.correlation_other_hand
    s0 = superpose(read_map(out / "run_it000_class001.mrc")[0], ref, pix)
    assert s0.resolution_05_A > 60.0


@pytest.mark.slow
def test_fast_run_recovers_a_d2_particle(tmp_path_factory):
    """Not tuned to the hexamer: the tiny noise-free D2 project, with D2 imposed (as the C6 run
    above), gives the D2 map at <= 40 Å, its three 2-folds within 5°, the right hand, after 20
    --fast mini-batches of 40 (measured 31.4 Å, 1.05°, correlation 0.71 against 0.61 mirrored;
    after 10: 38.4 Å, 2.7°, a margin too thin to test)."""
    from subtomo_nb.simulate import simulate_tiny_project
    from subtomo_nb.tasks.extract import extract_subtomos

    project = simulate_tiny_project(tmp_path_factory.mktemp("tiny_d2"), seed=0, snr=None, particle="d2")
    extract = extract_subtomos(project["optimisation_set"], None, project["project_dir"] / "Extract" / "job002",
                               binning=4, box=32, stack2d=False)
    out, _, _ = _fast_vdam(extract, project["project_dir"], tmp_path_factory.mktemp("vdam_fast_d2"), "D2",
                           nr_iter=20)
    ref, pix = read_map(project["map"])
    s = superpose(read_map(out / "initial_model.mrc")[0], ref, pix)
    assert s.resolution_05_A <= 40.0, s.fsc
    assert symmetry_axes_error_deg(s.matrix, "D2") < 5.0
    assert s.hand == "same" and s.correlation > s.correlation_other_hand
