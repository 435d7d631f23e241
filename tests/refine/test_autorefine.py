"""3D auto-refine end to end on the tiny simulated project (noise-free, 92 particles)."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.io.star import read_star
from subtomo_nb.refine.autorefine import AutoRefine, RefineOptions


def _options(tiny_project, tiny_extract_3d, out, **kw):
    base = dict(particles=tiny_extract_3d, reference=tiny_project["map"], output_root=out / "run",
                ini_high=50.0, sym="C6", particle_diameter=230.0, healpix_order=1, offset_range_px=4.0,
                offset_step_px=2.0, auto_ignore_angles=True, auto_resol_angles=True, auto_iter_max=2,
                batch_size=12, random_seed=1)
    base.update(kw)
    return RefineOptions(**base)


def _translation_error_px(data_star, truth_star, pix=10.8):
    d = read_star(data_star)["particles"]
    t = read_star(truth_star)["particles"].set_index("rlnTomoParticleName").loc[d["rlnTomoParticleName"].astype(str)]
    cols = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
    return np.linalg.norm(d[cols].to_numpy(float) - t[cols].to_numpy(float), axis=1) / pix


@pytest.fixture(scope="module")
def serial_run(tiny_project, tiny_extract_3d, tmp_path_factory):
    out = tmp_path_factory.mktemp("refine_serial")
    events: list[dict] = []
    job = AutoRefine.from_options(_options(tiny_project, tiny_extract_3d, out), progress=events.append)
    job.run()
    job.test_events = events
    return out, job


def test_outputs_have_relion_names_and_tables(serial_run, tiny_project):
    out, job = serial_run
    for name in ("run_it000_half1_class001.mrc", "run_it001_half2_model.star", "run_it001_data.star",
                 "run_it001_optimiser.star", "run_it001_sampling.star", "run_it001_optimisation_set.star",
                 "run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc",
                 "run_model.star", "run_data.star", "run_optimisation_set.star"):
        assert (out / name).exists(), name
    model = read_star(out / "run_model.star")
    assert {"model_general", "model_classes", "model_class_1", "model_groups"} <= set(model)
    assert "rlnGoldStandardFsc" in model["model_class_1"].columns
    data = read_star(out / "run_data.star")["particles"]
    assert set(data["rlnRandomSubset"]) == {1, 2}
    assert np.isfinite(model["model_general"]["rlnCurrentResolution"])
    assert read_star(out / "run_optimiser.star")["optimiser_general"]["rlnHasConverged"] == 1


def test_translations_move_to_the_truth(serial_run, tiny_project):
    out, _ = serial_run
    before = np.median(_translation_error_px(out / "run_it000_data.star", tiny_project["particles_true"]))
    after = np.median(_translation_error_px(out / "run_data.star", tiny_project["particles_true"]))
    assert before > 2.0          # the picks are 2.75 px off along the normal
    assert after < 1.0, (before, after)


def _assert_every_particle_counted(events: list[dict], n_particles: int, iterations: int) -> None:
    """The progress bar's events: per iteration, rising counts of both half-sets' particles up to all of them."""
    counts = [e for e in events if e["kind"] == "particles"]
    assert {e["iteration"] for e in counts} == set(range(1, iterations + 1))
    for it in range(1, iterations + 1):
        done = [e["done"] for e in counts if e["iteration"] == it]
        assert all(e["of"] == n_particles for e in counts if e["iteration"] == it)
        assert done == sorted(done) and done[0] > 0 and done[-1] == n_particles, done


def test_progress_counts_every_particle_of_each_iteration(serial_run):
    _, job = serial_run
    _assert_every_particle_counted(job.test_events, n_particles=len(job.poses.angles), iterations=2)


def test_finished_event_says_why_it_stopped(serial_run):
    """--auto_iter_max 2 ends the run before RELION's criteria hold; the event carries their numbers."""
    out, job = serial_run
    finished = job.test_events[-1]
    assert finished["kind"] == "finished"
    assert finished["reason"] == "iteration limit" and finished["iteration"] == 2 and finished["auto_iter_max"] == 2
    model = read_star(out / "run_model.star")["model_general"]
    assert finished["resolution_A"] == pytest.approx(float(model["rlnCurrentResolution"]), rel=1e-6)
    assert finished["pixel_size_A"] == pytest.approx(10.8)
    it1 = job.state.history[0]
    # the record is the state after iteration 1, when iteration 2 was made the final one
    assert finished["acc_rot_deg"] == pytest.approx(it1["acc_rot"])
    assert finished["change_orientations_deg"] == pytest.approx(it1["changes_orientations"])
    assert finished["fine_step_deg"] == pytest.approx(15.0)   # HEALPix order 1, oversampled once
    assert 0.0 <= finished["fsc_at_nyquist"] <= 1.0


def test_dask_run_equals_serial_run(serial_run, tiny_project, tiny_extract_3d, tmp_path):
    distributed = pytest.importorskip("distributed")
    from subtomo_nb.parallel import DaskExecutor

    out_serial, job_serial = serial_run
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        events: list[dict] = []
        job = AutoRefine.from_options(_options(tiny_project, tiny_extract_3d, tmp_path), executor=DaskExecutor(client, name="refine"),
                         progress=events.append)
        job.run()
    _assert_every_particle_counted(events, n_particles=len(job.poses.angles), iterations=2)
    np.testing.assert_allclose(job.poses.angles, job_serial.poses.angles, atol=1e-6)
    np.testing.assert_allclose(job.poses.offsets_A, job_serial.poses.offsets_A, atol=1e-6)


@pytest.mark.slow
def test_killing_a_worker_mid_iteration_changes_nothing(serial_run, tiny_project, tiny_extract_3d, tmp_path):
    """A worker dies (os._exit) while iteration 2's E-step runs: the job goes on, same result."""
    import os
    import threading
    import time

    distributed = pytest.importorskip("distributed")
    from subtomo_nb.parallel import DaskExecutor

    out_serial, job_serial = serial_run
    killed: list = []
    iteration_done = threading.Event()

    def progress(event):
        if event.get("kind") == "iteration" and event["iteration"] == 1:
            iteration_done.set()

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        def killer():
            iteration_done.wait(600)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                busy = {w: len(t) for w, t in client.processing().items() if t}
                if busy:
                    time.sleep(0.5)   # let the E-step tasks get going
                    victim = max(busy, key=busy.get)
                    killed.append(victim)
                    client.run(os._exit, 1, workers=[victim], on_error="ignore")
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        job = AutoRefine.from_options(_options(tiny_project, tiny_extract_3d, tmp_path), progress=progress,
                         executor=DaskExecutor(client, name="refine"))
        job.run()
        thread.join(5)
    assert killed, "no worker was killed during iteration 2"
    assert job.state.iteration == job_serial.state.iteration and job.state.has_converged
    np.testing.assert_allclose(job.poses.angles, job_serial.poses.angles, atol=1e-6)
    np.testing.assert_allclose(job.poses.offsets_A, job_serial.poses.offsets_A, atol=1e-6)
    from subtomo_nb.io.mrc import read_map

    a, _ = read_map(out_serial / "run_class001.mrc")
    b, _ = read_map(tmp_path / "run_class001.mrc")
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(np.abs(a).max()))


# ------------------------------------------------------------------ the iteration on the strict device
@pytest.fixture(scope="module")
def strict_run(tiny_project, tiny_extract_3d, tmp_path_factory):
    """The serial run's job on the strict backend, with the transfer counter read after each iteration."""
    from subtomo_nb.backend import get_backend

    pytest.importorskip("array_api_strict")
    be = get_backend("strict")
    out = tmp_path_factory.mktemp("refine_strict")
    snapshots: list[dict] = []

    def progress(event: dict) -> None:
        if event["kind"] == "iteration":
            snapshots.append({"iteration": event["iteration"], **be.transfers.snapshot()})

    be.transfers.reset()
    job = AutoRefine.from_options(_options(tiny_project, tiny_extract_3d, out, backend="strict"), progress=progress)
    job.run()
    job.test_snapshots = snapshots
    job.test_transfers = be.transfers.snapshot()
    return out, job


def test_strict_run_copies_particles_once_and_no_reference(strict_run):
    """The transfer counter: particle data go to the device in iteration 1 only (each particle once) and
    never come back; the half-set references stay on the device (the serial executor runs in this
    process and takes them as they are): after the job's start no reference is copied up, only the
    maps written come down."""
    _, job = strict_run
    snaps, end = job.test_snapshots, job.test_transfers
    assert [s["iteration"] for s in snaps] == [1, 2]
    # at least two batches per half-set, so a copy per batch would show as more than one per iteration
    assert all(len(h.rows) > 2 * job.opts.batch_size for h in job.halves)

    def h2d(snap: dict, kind: str) -> tuple[int, int]:
        return tuple(snap["h2d"].get(kind, (0, 0)))

    particles_after_1 = h2d(snaps[0], "particles")
    assert particles_after_1[0] > 0
    assert h2d(end, "particles") == particles_after_1          # no particle copy after iteration 1
    assert particles_after_1[1] == job.source.transforms.nbytes  # every particle copied exactly once
    assert len(job.source.transforms._entries) == len(job.poses.angles)
    assert "particles" not in end["d2h"]                        # particle data never come back
    assert h2d(end, "reference") == (0, 0), end                 # no reference upload, in any iteration
    assert "reference" not in end["d2h"]
    # the maps: the starting references and the mask up once; down only what is written
    n_halves = len(job.halves)
    assert h2d(end, "map")[0] == n_halves + 1
    # the half-set sums never cross (the M-step runs where they are)
    assert "sums" not in end["h2d"] and "sums" not in end["d2h"]


def _assert_same_run(out_np, job_np, out_st, job_st) -> None:
    """Same poses (bit for bit) and maps within 1e-4 of their largest value; FSC to 1e-4."""
    from subtomo_nb.io.mrc import read_map

    np.testing.assert_array_equal(job_st.poses.angles, job_np.poses.angles)
    np.testing.assert_array_equal(job_st.poses.offsets_A, job_np.poses.offsets_A)
    for name in ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc"):
        a, _ = read_map(out_np / name)
        b, _ = read_map(out_st / name)
        assert np.abs(b - a).max() <= 1e-4 * np.abs(a).max(), name
    np.testing.assert_allclose(job_st.state.fsc, job_np.state.fsc, rtol=1e-4, atol=1e-6)


def test_strict_run_equals_numpy_run(strict_run, serial_run):
    """Same poses on the strict device as on numpy; final map within 1e-4 relative."""
    (out_np, job_np), (out_st, job_st) = serial_run, strict_run
    _assert_same_run(out_np, job_np, out_st, job_st)


@pytest.mark.slow
def test_strict_run_to_convergence_equals_numpy_run(tiny_project, tiny_extract_3d, tmp_path):
    """Auto-refine to RELION's convergence (local searches, the final full-size iteration) on strict and
    on numpy: same poses, final map within 1e-4 relative."""
    pytest.importorskip("array_api_strict")
    runs = []
    for backend in ("numpy", "strict"):
        out = tmp_path / backend
        out.mkdir()
        job = AutoRefine.from_options(_options(tiny_project, tiny_extract_3d, out, auto_iter_max=20,
                                               auto_local_healpix_order=2, backend=backend))
        job.run()
        assert job.stop["reason"] == "converged", job.stop
        assert job.state.sampling.is_local and job.state.sampling.healpix_order >= 2
        assert job.state.current_size == job.box
        runs.append((out, job))
    (out_np, job_np), (out_st, job_st) = runs
    assert job_st.state.iteration == job_np.state.iteration
    _assert_same_run(out_np, job_np, out_st, job_st)
