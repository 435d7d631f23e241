"""VDAM initial model: schedules, the gradient update, outputs, and a de novo map on the tiny set."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.fourier.grid import freq_grid
from subtomo_nb.initial_model import schedules as S
from subtomo_nb.initial_model.compare import axis_error_deg, mirror, superpose
from subtomo_nb.initial_model.gradient import (
    GradientMoments,
    gradient,
    map_from_transform,
    reference_transform,
    resolution_shell,
    vdam_update,
)
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star


# ---------------------------------------------------------------------------------------------
# schedules (relion-conventions.md §8.2-§8.3)
# ---------------------------------------------------------------------------------------------
def test_iteration_budget_splits_like_relion():
    assert S.iteration_budget(200) == S.Budget(200, 60, 100, 40)
    assert S.iteration_budget(100) == S.Budget(100, 30, 50, 20)
    # fractions adding to more than 0.9 are divided by their sum + 0.1
    assert S.iteration_budget(20, 0.7, 0.4) == S.Budget(20, 11, 3, 6)     # 0.7/1.2*20 = 11.7, 0.4/1.2*20 = 6.7


@pytest.mark.parametrize("n, expected", [(300, (200, 1000)), (100_000, (500, 10_000)),
                                         (2_000_000, (5000, 50_000)), (50, (200, 1000))])
def test_subset_sizes_follow_the_denovo_rule(n, expected):
    assert S.subset_sizes(n) == expected
    assert S.subset_sizes(n, 64, 128) == (64, 128)


def test_subset_size_ramps_between_the_phases():
    b = S.iteration_budget(200)                        # ini 60, between 100, fin 40
    n = 100_000                                        # ini 500, fin 10000
    assert S.subset_size(1, b, n) == 500
    assert S.subset_size(59, b, n) == 500
    assert S.subset_size(60, b, n) == 500
    assert S.subset_size(110, b, n) == 500 + round(50 / 100 * 9500)
    assert S.subset_size(159, b, n) == 500 + round(99 / 100 * 9500)
    assert S.subset_size(160, b, n) == 10_000
    # a small data set: every particle once the size reaches them
    assert S.subset_size(1, b, 300) == 200
    assert S.subset_size(200, b, 300) == 300


def test_step_size_and_T_sigmoids():
    b = S.iteration_budget(200)
    # step: 0.5 * 1.8 early, 0.5 late, half-way (0.7) at ini + between/4
    assert S.step_size(1, b) == pytest.approx(0.9, abs=1e-4)
    assert S.step_size(b.ini + b.between // 4, b) == pytest.approx(0.7, abs=1e-12)
    assert S.step_size(200, b) == pytest.approx(0.5, abs=1e-6)
    # T: 1 early, T late, (1 + T)/2 at ini + between/8
    assert S.tau2_fudge(1, b, 4.0) == pytest.approx(1.0, abs=1e-6)
    assert S.tau2_fudge(b.ini + b.between / 8, b, 4.0) == pytest.approx(2.5, abs=1e-12)
    assert S.tau2_fudge(200, b, 4.0) == pytest.approx(4.0, abs=1e-9)
    # the formula, at an arbitrary iteration
    it, a = 83, b.between / 2
    s = 1 / (10 ** ((it - b.ini - a / 2) / (a / 4)) + 1)
    assert S.step_size(it, b) == pytest.approx(0.9 * s + 0.5 * (1 - s), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# the gradient update (§8.5)
# ---------------------------------------------------------------------------------------------
def _smooth_volume(n=16, seed=0):
    rng = np.random.default_rng(seed)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((n, n, n))
    for _ in range(6):
        p = rng.uniform(-3, 3, 3)
        vol += np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 1.5 ** 2))
    return vol


def test_gradient_is_preconditioned_residual_inside_the_radius():
    n = 16
    P = reference_transform(_smooth_volume(n), 1, 6)
    rng = np.random.default_rng(1)
    D = rng.normal(size=P.shape) + 1j * rng.normal(size=P.shape)
    W = rng.uniform(0, 5, size=P.shape)
    g = gradient(D, W, P, 1, 6)
    kx, ky, kz = freq_grid(n, 3)
    r2 = np.broadcast_to(kx * kx + ky * ky + kz * kz, P.shape)
    inside = r2 < 36
    expected = (D - W * P) / np.maximum(1.0, W)
    np.testing.assert_allclose(g[inside], expected[inside])
    assert np.all(g[~inside] == 0)
    # where W < 1 the residual is not divided
    low = inside & (W < 1)
    np.testing.assert_allclose(g[low], (D - W * P)[low])


def test_moments_and_update_rule_at_a_voxel():
    n = 16
    P = reference_transform(_smooth_volume(n), 1, 7)
    rng = np.random.default_rng(2)
    g1 = [rng.normal(size=P.shape) + 1j * rng.normal(size=P.shape) for _ in range(2)]
    g2 = [rng.normal(size=P.shape) + 1j * rng.normal(size=P.shape) for _ in range(2)]
    mom = GradientMoments.zeros(P.shape)
    vdam_update(P, tuple(g1), mom, pad=1, r_max=7, box=n, tau2_fudge=2.0, step=0.5)
    idx = (1, 2, 3)                                    # |k| = sqrt(14) < 7: inside
    np.testing.assert_allclose([mom.m1[0][idx], mom.m1[1][idx]], [g1[0][idx], g1[1][idx]])
    r1 = abs(g1[1][idx] - g1[0][idx]) ** 2 / (abs(0.5 * (g1[0][idx] + g1[1][idx])) ** 2 + 1e-12)
    assert mom.m2[idx] == pytest.approx(0.999 + 0.001 * r1)
    step = vdam_update(P, tuple(g2), mom, pad=1, r_max=7, box=n, tau2_fudge=2.0, step=0.3)
    mA = 0.9 * g1[0][idx] + 0.1 * g2[0][idx]
    mB = 0.9 * g1[1][idx] + 0.1 * g2[1][idx]
    np.testing.assert_allclose([mom.m1[0][idx], mom.m1[1][idx]], [mA, mB])
    r2 = abs(g2[1][idx] - g2[0][idx]) ** 2 / (abs(0.5 * (g2[0][idx] + g2[1][idx])) ** 2 + 1e-12)
    v = 0.999 * (0.999 + 0.001 * r1) + 0.001 * r2
    assert mom.m2[idx] == pytest.approx(v)
    # f of the voxel's shell from the mean |m_A - m_B| and mean |P| of the shell
    shell = round(math.sqrt(14))
    kx, ky, kz = freq_grid(n, 3)
    rr = np.sqrt(np.broadcast_to(kx * kx + ky * ky + kz * kz, P.shape))
    sel = (np.round(rr) == shell) & (rr ** 2 < 49)
    snr = 2 * 2.0 * np.abs(P[sel]).mean() / np.abs(mom.m1[0] - mom.m1[1])[sel].mean()
    f = snr / (1 + snr)
    assert step.fsc_estimate[shell] == pytest.approx(f)
    d = 0.5 * (mA + mB) / (math.sqrt(v) + 1e-12)
    assert step.transform[idx] == pytest.approx(P[idx] + 0.3 * (f * d - (1 - f) * P[idx]))
    assert np.all(step.transform[rr ** 2 >= 49] == 0)


def test_repeated_updates_converge_to_the_signal():
    """Noisy but unbiased half-set gradients drive P from a wrong start to the signal.

    (From P = 0 nothing moves: the per-shell SNR uses the current map's amplitude, as RELION.)
    """
    n, r_max = 16, 7
    truth = reference_transform(_smooth_volume(n, seed=3), 1, r_max)
    rng = np.random.default_rng(4)
    P = reference_transform(_smooth_volume(n, seed=5), 1, r_max)
    start = map_from_transform(P, n, 1, r_max)
    mom = GradientMoments.zeros(P.shape)
    W = np.full(P.shape, 50.0)
    noise = 0.02 * np.abs(truth).max()
    for _ in range(40):
        grads = []
        for _h in range(2):
            X = truth + noise * (rng.normal(size=P.shape) + 1j * rng.normal(size=P.shape))
            grads.append(gradient(W * X, W, P, 1, r_max))
        P = vdam_update(P, tuple(grads), mom, pad=1, r_max=r_max, box=n, tau2_fudge=4.0, step=0.5).transform
    vol, ref = map_from_transform(P, n, 1, r_max), map_from_transform(truth, n, 1, r_max)
    assert np.corrcoef(start.ravel(), ref.ravel())[0, 1] < 0.6
    assert np.corrcoef(vol.ravel(), ref.ravel())[0, 1] > 0.98


def test_map_from_transform_inverts_reference_transform():
    n = 16
    vol = _smooth_volume(n)
    back = map_from_transform(reference_transform(vol, 1, n // 2), n, 1, n // 2)
    inner = np.s_[3:-3, 3:-3, 3:-3]
    assert np.abs(back[inner] - vol[inner]).max() < 0.05 * vol.max()


def test_resolution_shell_is_first_shell_below_one_minus_one():
    assert resolution_shell(np.array([9, 5, 3, 2, 0.9, 3, 0.1])) == 3
    assert resolution_shell(np.array([9, 5, 3, 2, 0.9]), minimum=5) == 5
    assert resolution_shell(np.array([9, 5, 3])) == 2


# ---------------------------------------------------------------------------------------------
# superposition (compare.py)
# ---------------------------------------------------------------------------------------------
def test_superpose_recovers_rotation_shift_and_hand(tiny_project):
    from subtomo_nb.fourier.fft import irfft3, rfft3, shift_half
    from subtomo_nb.initial_model.map_geometry import rotate_map

    ref, pix = read_map(tiny_project["map"])
    ref = np.asarray(ref, np.float64)
    moved = rotate_map(ref, 40.0, 70.0, 120.0).astype(np.float64)
    moved = irfft3(shift_half(rfft3(moved), np.array([1.5, -2.0, 0.7])), ref.shape[0])
    s = superpose(mirror(moved), ref, pix, healpix_order=1, n_candidates=1)
    assert s.mirrored and s.hand == "mirrored"
    assert s.correlation > 0.99 > s.correlation_other_hand
    assert s.resolution_05_A < 25.0
    # the superposition undoes the motion: in the un-mirrored map the C6 axis is A0 z; it lands on z
    from subtomo_nb.geometry.euler import euler_to_matrix

    axis_in_moved = euler_to_matrix(40.0, 70.0, 120.0) @ np.array([0, 0, 1.0])
    assert axis_error_deg(s.matrix, axis=tuple(axis_in_moved), reference_axis=(0, 0, 1)) < 1.0


# ---------------------------------------------------------------------------------------------
# end to end on the tiny noise-free set
# ---------------------------------------------------------------------------------------------
TINY_ITER = 10


@pytest.fixture(scope="module")
def tiny_run(tiny_extract_3d, tiny_project, tmp_path_factory):
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    out = tmp_path_factory.mktemp("vdam")
    opts = VdamOptions(particles=tiny_extract_3d, output_root=out / "run", nr_iter=TINY_ITER, particle_diameter=230.0,
                       sym="C6", run_in_c1=False, sigma_tilt=10.0, random_seed=1, max_significant=5,
                       grad_write_iter=5, project_dir=tiny_project["project_dir"])
    events = []
    job = InitialModel.from_options(opts, progress=events.append)
    job.run()
    return out, job, events


@pytest.mark.slow
def test_outputs_have_relion_names_and_tables(tiny_run):
    out, job, events = tiny_run
    for it in (0, 5, TINY_ITER):
        for suffix in ("class001.mrc", "data.star", "model.star", "optimiser.star"):
            assert (out / f"run_it{it:03d}_{suffix}").exists(), (it, suffix)
    assert not (out / "run_it003_model.star").exists()
    assert (out / "initial_model.mrc").exists() and (out / "run_optimisation_set.star").exists()
    model = read_star(out / f"run_it{TINY_ITER:03d}_model.star")
    assert {"model_general", "model_classes", "model_class_1", "model_groups", "model_optics_group_1"} <= set(model)
    classes = model["model_classes"]
    # outside the project directory the names stay as written (inside it they are project-relative)
    assert list(classes["rlnReferenceImage"]) == [str(out / f"run_it{TINY_ITER:03d}_class001.mrc")]
    assert classes["rlnClassDistribution"].iloc[0] == pytest.approx(1.0)
    assert model["model_general"]["rlnNrClasses"] == 1
    opt = read_star(out / f"run_it{TINY_ITER:03d}_optimiser.star")["optimiser_general"]
    assert opt["rlnCurrentIteration"] == TINY_ITER and opt["rlnNumberOfIterations"] == TINY_ITER
    assert opt["rlnDoGradientRefine"] == 1
    data = read_star(out / f"run_it{TINY_ITER:03d}_data.star")["particles"]
    assert len(data) == job.n and set(data["rlnClassNumber"]) == {1}
    oset = read_star(out / "run_optimisation_set.star")
    first = next(iter(oset.values()))
    assert str(first["rlnTomoParticlesFile"]).endswith(f"run_it{TINY_ITER:03d}_data.star")
    # one progress event per iteration, with the schedules' values
    its = [e for e in events if e["kind"] == "iteration"]
    b = S.iteration_budget(TINY_ITER)
    assert [e["iteration"] for e in its] == list(range(1, TINY_ITER + 1))
    assert [e["step"] for e in its] == pytest.approx([S.step_size(i, b) for i in range(1, TINY_ITER + 1)])
    assert all(e["subset"] == job.n for e in its)     # 92 particles < 200: every particle


@pytest.mark.slow
def test_de_novo_map_matches_the_truth(tiny_run, tiny_project):
    out, _job, _ = tiny_run
    ref, pix = read_map(tiny_project["map"])
    vol, vpix = read_map(out / "initial_model.mrc")
    assert vpix == pytest.approx(pix, rel=1e-4)
    s = superpose(vol, ref, pix)
    # the C6 axis imposed on z during the run is the true one
    assert axis_error_deg(s.matrix) < 5.0
    assert s.resolution_05_A <= 40.0, s.fsc
    # subtomograms carry the hand: the map is not mirrored
    assert s.hand == "same" and s.correlation > s.correlation_other_hand
    # the start (random orientations) is far from it
    s0 = superpose(read_map(out / "run_it000_class001.mrc")[0], ref, pix)
    assert s0.resolution_05_A > 60.0


def _vdam_strict(extract, out, **kw):
    """A VDAM run on the strict test device; the per-iteration count of particle uploads."""
    from subtomo_nb.backend import get_backend
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    be = get_backend("strict")
    be.transfers.reset()
    uploads = []

    def progress(event):
        if event["kind"] == "iteration":
            uploads.append(be.transfers.copies("h2d", "particles"))

    job = InitialModel.from_options(VdamOptions(particles=extract, output_root=out / "run", backend="strict", **kw),
                                    progress=progress)
    job.run()
    return job, uploads, be.transfers.snapshot()


def _assert_same_run(strict, numpy_job):
    """Same poses, classes and resolutions; class maps within 1e-4 relative (max |a - b| / max |b|).

    The E-step's float32 sums are not bit-identical between the backends (the start and the M-step
    are: see test_gradient.py), so the maps drift apart by ~3e-5 over 10 mini-batches. The per-shell
    curves are compared against their largest value (1e-3), τ² from shell 1: the power of the
    lowest shells of a map with almost no net mass is a cancellation that magnifies that drift
    (shell 0, the net mass squared, differs by 3e-3 of τ²'s largest value after 10 mini-batches).
    """
    np.testing.assert_allclose(strict.poses.angles, numpy_job.poses.angles, rtol=0, atol=1e-6)
    np.testing.assert_allclose(strict.poses.offsets_A, numpy_job.poses.offsets_A, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(strict.classes, numpy_job.classes)
    assert strict.state.current_resolution == numpy_job.state.current_resolution
    for cs, cn in zip(strict.classes_model, numpy_job.classes_model):
        got = strict.backend.to_host(cs.reference, "map")
        assert np.abs(got - cn.reference).max() <= 1e-4 * np.abs(cn.reference).max()
        assert cs.estimated_resolution == cn.estimated_resolution
        for a, b in ((cs.ssnr, cn.ssnr), (cs.tau2[1:], cn.tau2[1:]), (cs.fsc_estimate, cn.fsc_estimate)):
            assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()


def test_vdam_strict_equals_numpy(tiny_extract_3d, tmp_path):
    """Three mini-batches on the strict test device (class map, moments and M-step device arrays):
    the numpy run's poses and maps; no particle data uploaded after the first iteration, and the
    class maps come to the host only to be written."""
    pytest.importorskip("array_api_strict")
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    kw = dict(nr_iter=3, particle_diameter=230.0, sym="C6", run_in_c1=False, sigma_tilt=10.0, random_seed=1,
              max_significant=5, grad_write_iter=2)
    ref = InitialModel.from_options(VdamOptions(particles=tiny_extract_3d, output_root=tmp_path / "np" / "run", **kw))
    ref.run()
    job, uploads, counts = _vdam_strict(tiny_extract_3d, tmp_path / "strict", **kw)
    _assert_same_run(job, ref)
    assert uploads[0] > 0 and uploads[-1] == uploads[0], uploads
    assert counts["d2h"]["map"][0] == 3, counts            # iterations 0, 2 and 3 written
    for name in ("run_it003_class001.mrc", "initial_model.mrc"):
        a, b = read_map(tmp_path / "strict" / name)[0], read_map(tmp_path / "np" / name)[0]
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), name


@pytest.mark.slow
def test_vdam_strict_ten_mini_batches(tiny_run, tiny_extract_3d, tiny_project, tmp_path):
    """The acceptance run: the 10 mini-batches of ``tiny_run`` on the strict device give its poses and map."""
    pytest.importorskip("array_api_strict")
    _, ref, _ = tiny_run
    job, uploads, _ = _vdam_strict(tiny_extract_3d, tmp_path, nr_iter=TINY_ITER, particle_diameter=230.0, sym="C6",
                                   run_in_c1=False, sigma_tilt=10.0, random_seed=1, max_significant=5,
                                   grad_write_iter=5, project_dir=tiny_project["project_dir"])
    _assert_same_run(job, ref)
    assert uploads[-1] == uploads[0], uploads


@pytest.mark.slow
def test_dask_run_equals_serial_run(tiny_extract_3d, tmp_path):
    distributed = pytest.importorskip("distributed")
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    def opts(out):
        return VdamOptions(particles=tiny_extract_3d, output_root=out / "run", nr_iter=2, particle_diameter=230.0,
                           sym="C6", run_in_c1=False, sigma_tilt=10.0, random_seed=5, max_significant=5)

    serial = InitialModel.from_options(opts(tmp_path / "serial"))
    serial.run()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        from subtomo_nb.parallel import DaskExecutor

        par = InitialModel.from_options(opts(tmp_path / "dask"), executor=DaskExecutor(client, name="inimodel"))
        par.run()
    np.testing.assert_allclose(par.poses.angles, serial.poses.angles, atol=1e-6)
    np.testing.assert_allclose(par.poses.offsets_A, serial.poses.offsets_A, atol=1e-6)
    np.testing.assert_allclose(par.classes_model[0].reference, serial.classes_model[0].reference, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# the coarse significance cap (RELION's maximum_significants = 100 K in gradient runs)
# ---------------------------------------------------------------------------------------------
def test_significance_cap_limits_the_oversampled_coarse_samples(tiny_extract_3d, tiny_project):
    from subtomo_nb.fourier.projector import Projector
    from subtomo_nb.refine.expectation import EStepSettings, ParticleBatch, expectation_batch
    from subtomo_nb.refine.sampling import Sampling
    from subtomo_nb.tasks.particle_data import load_particle_set, particle_transforms

    pset, tomo = load_particle_set(tiny_extract_3d)
    rows = np.arange(4)
    data, ctf2, mult = particle_transforms(pset, rows, tomograms=tomo, dtype=np.float32)
    ref, _ = read_map(tiny_project["map"])           # no symmetry ties between orientations
    proj = Projector(np.asarray(ref, np.float32), pad=1)
    smp = Sampling(healpix_order=1, offset_range_A=4 * 10.8, offset_step_A=2 * 10.8)
    kw = {"pixel_size_A": 10.8, "coarse_radius": 5, "fine_radius": 8, "sigma_offset_A": 10.0}
    prior = np.tile([0.0, 90.0, 0.0], (4, 1))
    sigma2 = np.full(17, 1e3)                         # flat posteriors: many significant samples
    batch = ParticleBatch.of(data, ctf2, mult)
    free = expectation_batch(proj, batch, sigma2, smp, prior, EStepSettings(**kw))
    capped = expectation_batch(proj, batch, sigma2, smp, prior, EStepSettings(max_significant=2, **kw))
    # at most 2 coarse samples oversampled: 2 x (8 orientations x 8 translations) fine samples
    assert capped.n_significant.max() <= 2 * 64 < free.n_significant.min()


def test_centre_positive_mass_moves_the_density_to_the_centre():
    from subtomo_nb.initial_model.outputs import centre_positive_mass

    n = 32
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.exp(-((x - 3) ** 2 + (y + 2) ** 2 + (z - 1) ** 2) / 8.0) - 0.01   # net mass ~ 0 allowed
    out, shift = centre_positive_mass(vol)
    np.testing.assert_allclose(shift, [-3, 2, -1], atol=0.05)
    assert np.unravel_index(np.argmax(out), out.shape) == (16, 16, 16)


def test_auto_sampling_stops_below_local_order_but_refines_translations(tiny_extract_3d, tmp_path):
    """RELION's updateAngularSampling in gradient runs: a stalled resolution and a coarse enough
    step give one HEALPix order finer; at the last global order (3 with local searches from 4)
    the order stays and only the translations follow the accuracy; without a stall nothing moves."""
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    opts = VdamOptions(particles=tiny_extract_3d, output_root=tmp_path / "run", nr_iter=10, particle_diameter=230.0)
    job = InitialModel.from_options(opts)
    s = job.state
    s.acc_rot, s.acc_trans_A, s.change_offsets_A = 1.0, 1.0, 0.5 * job.pix
    step0 = s.sampling.offset_step_A
    s.nr_iter_wo_resol_gain = 0
    job._auto_sampling()
    assert s.sampling.healpix_order == 1 and s.sampling.offset_step_A == step0
    for expected_order, expected_step in ((2, step0 / 2), (3, step0 / 4), (3, step0 / 8)):
        s.nr_iter_wo_resol_gain = 1
        job._auto_sampling()
        assert s.sampling.healpix_order == expected_order
        assert s.sampling.offset_step_A == pytest.approx(expected_step)
        assert s.nr_iter_wo_resol_gain == 0
    s.acc_rot = 10.0                                   # 3.75° fine step < 0.75 * 10°: fine enough
    s.nr_iter_wo_resol_gain = 1
    job._auto_sampling()
    assert s.has_fine_enough_sampling and s.sampling.offset_step_A == pytest.approx(step0 / 8)


def test_job_directory_given_relative_to_the_current_directory_outside_the_project(tiny_extract_3d, tiny_project,
                                                                                    tmp_path, monkeypatch):
    """The model STAR names its class maps so that the job's own last step (align_symmetry of the
    largest class) finds them: an output root given relative to the current directory, outside
    the project directory, used to be written as given and then looked for under the project."""
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    monkeypatch.chdir(tmp_path)
    opts = VdamOptions(particles=tiny_extract_3d, output_root=Path("im") / "run", nr_iter=1, particle_diameter=230.0,
                       sym="C6", run_in_c1=True, sigma_tilt=10.0, random_seed=1, max_significant=5,
                       project_dir=tiny_project["project_dir"])
    job = InitialModel.from_options(opts, progress=lambda e: None)
    job.run()
    assert (tmp_path / "im" / "initial_model.mrc").is_file()
    name = read_star(tmp_path / "im" / "run_it001_model.star")["model_classes"]["rlnReferenceImage"].iloc[0]
    assert Path(name) == tmp_path / "im" / "run_it001_class001.mrc"


@pytest.mark.parametrize("fin", [500, 1])
def test_fast_refuses_a_final_mini_batch_size(tmp_path, fin):
    """--fast keeps the mini-batches at their initial size: the Python API refuses a --grad_fin_subset it would
    ignore, first thing in InitialModel() (the job layer refuses it in its validation step, naming the field)."""
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions

    opts = VdamOptions(particles=tmp_path / "none.star", output_root=tmp_path / "run", fast=True, grad_fin_subset=fin)
    with pytest.raises(ValueError, match=rf"^--grad_fin_subset {fin} cannot be used with --fast"):
        InitialModel(opts, None, None)
