"""The synthetic tutorial, end to end: simulate, extract at bin 4, reconstruct with the truth,
then (``refine=True``, the default) 3D auto-refine — from the ground truth low-passed to 50 Å, or
with ``initial_model=True`` from a 3D initial reference made by VDAM first.

Job directories follow RELION's layout inside the project::

    <project>/                       simulated project (tomograms.star, particles.star, ground_truth/, masks/)
    <project>/Extract/job002/        3D pseudo-subtomograms at bin 4 (box 32)
    <project>/Reconstruct/job003/    (RELION 5's process name for Reconstruct particle)
                                     particles with the true orientations and random half-sets,
                                     merged.mrc, merged_half1/2.mrc, merged_fsc.star
    <project>/InitialModel/job004/   (``initial_model=True``) VDAM with the tutorial's settings
    <project>/Refine3D/job004/       (or job005 after an initial model) auto-refine (run_class001.mrc, run_model.star) from the initial
                                     model, or by default from the ground-truth map low-passed to 50 Å

The reported numbers are the gold-standard (half-map) FSC = 0.143 resolution and, because the
truth is known, the FSC = 0.143 resolution of the merged map against the ground truth inside the
mask; for the refinement also the angular (modulo symmetry) and translational errors of the
refined poses against the true ones.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from subtomo_nb.fourier.fsc import fsc, resolution
from subtomo_nb.io._paths import project_relative
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.optimisation_set import OptimisationSet, write_optimisation_set
from subtomo_nb.io.star import read_star
from subtomo_nb.tasks.extract import extract_subtomos
from subtomo_nb.tasks.reconstruct import reconstruct_particles
from subtomo_nb.tasks.tutorial import particles_with_truth, pose_errors

from .jobdir import job_execution
from .presets import PRESETS
from .progress import Progress, read_progress

__all__ = ["run_tutorial"]


def _announce(progress: Any, text: str) -> None:
    """Tell the user which stage starts now (a plain message event)."""
    if progress is not None:
        progress(Progress(message=text))


def run_tutorial(project_dir: str | os.PathLike = "tutorial", *, seed: int = 0, tiny: bool = False,
                 n_workers: int = 2, snr: float | None | str = "default", binning: int = 4,
                 box: int = 32, refine: bool = True, initial_model: bool = False,
                 gpu: str | None = None, fast: bool = False, progress: Any = None) -> dict[str, Any]:
    """Simulate the synthetic project, extract at bin 4 and reconstruct with the true poses.

    Parameters
    ----------
    project_dir
        Project directory (created).
    seed
        Random seed of the simulation and of the half-set split.
    tiny
        Use the tiny tutorial preset (:data:`subtomo_nb.simulate.TINY_TUTORIAL`: one tomogram,
        ~90 particles, the full dose-symmetric tilt series; under a minute on two cores) instead of
        the default dataset.
    n_workers
        Workers for extraction, reconstruction and auto-refine (a local dask cluster).
    snr
        Signal-to-noise ratio of the tilt images; ``None`` for noise-free; ``"default"`` keeps
        the simulator's default.
    binning, box
        Extraction binning and box (binned pixels).
    refine
        Also run 3D auto-refine (the tutorial's ``--ini_high 50 --sym C6 --particle_diameter 230``,
        finer angular sampling faster; reference not on absolute greyscale, CTF correction) on a
        local dask cluster of ``n_workers`` workers, from the ground-truth map.
    gpu
        The initial model and the auto-refine run with ``--gpu gpu`` (relion_refine's: ``""`` all
        visible GPUs, ``"0,1"`` those); None: on the CPU (or ``SUBTOMO_BACKEND``).
    initial_model
        Make the reference first with the 3D initial reference job (VDAM, the tutorial's settings:
        100 mini-batches, T = 4, C6, tilt prior 10°) and refine from it.
    fast
        Run that initial model with "Fast search" (``--fast``: subtomo_nb's own accelerated search,
        not RELION's; :mod:`subtomo_nb.initial_model.fast`); False (the default): RELION's job. Used
        only with ``initial_model`` (and ``refine``).
    progress
        Called with a message as each stage starts and with each job's progress events
        (:class:`subtomo_nb.jobs.progress.Progress`).

    Returns
    -------
    dict with the paths written (project-relative) and the measured numbers (particles,
    resolutions in Å, pose errors, seconds per stage); :func:`subtomo_nb.tasks.tutorial.summary_lines` turns it into text.
    """
    from subtomo_nb.simulate import simulate_project, simulate_tiny_project

    if fast and not (initial_model and refine):
        raise ValueError("fast is for the initial model: it needs initial_model=True and refine=True")
    project = Path(project_dir)
    if gpu is not None and refine:
        from .devices import job_devices, require_cluster

        require_cluster(job_devices(gpu=gpu))   # refuse a --gpu this machine cannot give before simulating
    kwargs: dict = {"seed": seed}
    if snr != "default":
        kwargs["snr"] = snr
    t0 = time.perf_counter()
    _announce(progress, f"simulating the {'tiny ' if tiny else ''}synthetic project in {project}/ "
                        "(tilt series with CTF, dose weighting and noise; ground truth kept in ground_truth/)")
    sim = simulate_tiny_project(project, tutorial=True, **kwargs) if tiny else simulate_project(project, **kwargs)
    times = {"simulate": time.perf_counter() - t0}
    t1 = time.perf_counter()
    extract_dir = project / "Extract" / "job002"
    # each job records itself as RELION's pipeliner would run it (job.star, note.txt, run.out, exit marker)
    _announce(progress, f"extracting {sim['n_particles']} pseudo-subtomograms at bin {binning}, box {box} "
                        f"(Extract/job002/)")
    extract_values = {"in_optimisation": project_relative(sim["optimisation_set"], project), "binning": binning,
                      "box_size": box, "do_stack2d": False, "nr_threads": n_workers}
    with job_execution("extract", extract_values, extract_dir, project_dir=project, progress=progress):
        extracted = extract_subtomos(sim["optimisation_set"], None, extract_dir, binning=binning, box=box,
                                     stack2d=False, n_workers=n_workers)
    times["extract"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    rec_dir = project / "Reconstruct" / "job003"
    _announce(progress, "reconstructing with the true orientations, the best these data allow (Reconstruct/job003/)")
    true_name = rec_dir / "particles_true.star"
    rec_values = {"use_direct_entries": True, "in_particles": project_relative(true_name, project),
                  "in_tomograms": project_relative(sim["tomograms"], project), "binning": binning, "box_size": box,
                  "sym_name": "C6", "do_ctf": True, "nr_threads": n_workers}
    with job_execution("reconstruct", rec_values, rec_dir, project_dir=project, progress=progress):
        true_star = particles_with_truth(extracted, sim["particles_true"], true_name, seed=seed)
        oset = OptimisationSet({"rlnTomoParticlesFile": project_relative(true_star, project),
                                "rlnTomoTomogramsFile": project_relative(sim["tomograms"], project)})
        write_optimisation_set(rec_dir / "optimisation_set.star", oset)
        result = reconstruct_particles(true_star, rec_dir / "merged.mrc", sym="C6", ctf=True, n_workers=n_workers)
    times["reconstruct"] = time.perf_counter() - t2
    merged, pix = read_map(result.merged_path)
    truth, _ = read_map(sim["map"])
    mask, _ = read_map(sim["mask"])
    fsc_truth = np.asarray(fsc(merged, truth, mask))
    n = merged.shape[0]
    out: dict[str, Any] = {
        "project": str(project),
        "particles": int(len(read_star(true_star)["particles"])),
        "pixel_size_A": float(pix),
        "nyquist_A": 2.0 * float(pix),
        "true_poses_map": project_relative(result.merged_path, project),
        "true_poses_resolution_A": float(result.resolution_A),
        "true_poses_resolution_vs_truth_A": float(resolution(fsc_truth, n, pix, 0.5)),
        "binning": float(binning),
        "box": int(box),
        "seconds": times,
    }
    if refine:
        out.update(_initial_model_and_refine(project, sim, extract_dir, n_workers, progress, initial_model, times,
                                             gpu, fast))
    return out


def _initial_model_and_refine(project: Path, sim: dict, extract_dir: Path, n_workers: int,
                              progress: Any, initial_model: bool, times: dict[str, float],
                              gpu: str | None = None, fast: bool = False) -> dict[str, Any]:
    """[InitialModel (VDAM, tutorial preset; ``fast``: with --fast), then] Refine3D (tutorial preset), numbered by
    the project."""
    from subtomo_nb.parallel import close_if_owned

    from .jobdir import run_job
    from .runners import local_client

    out: dict[str, Any] = {}
    oset = project_relative(extract_dir / "optimisation_set.star", project)
    compute = {"nr_threads": n_workers, "use_gpu": gpu is not None, "gpu_ids": gpu or ""}
    client = local_client(compute)
    _announce(progress, "running in this process" if client is None else
              f"started a local dask cluster of {len(client.scheduler_info()['workers'])} workers")
    refine_values = {**PRESETS["refine3d"]["tutorial"], "in_optimisation": oset, **compute}
    try:
        if initial_model:
            t0 = time.perf_counter()
            _announce(progress, "3D initial reference (VDAM, the tutorial's 100 mini-batches"
                                + (", --fast: subtomo_nb's accelerated search, not RELION's)" if fast else ")"))
            im_dir = run_job("initial_model", {**PRESETS["initial_model"]["tutorial"], "in_optimisation": oset,
                                               "do_fast": bool(fast), **compute},
                             project, client=client, progress=progress)
            ref = project_relative(im_dir / "initial_model.mrc", project)
            out["initial_model"] = ref
            times["initial model"] = time.perf_counter() - t0
        else:
            ref = project_relative(sim["map"], project)
        t1 = time.perf_counter()
        _announce(progress, f"3D auto-refine from {ref} low-passed to {refine_values['ini_high']:g} Å, "
                            f"C6, mask {refine_values['particle_diameter']:g} Å")
        rf_dir = run_job("refine3d", {**refine_values, "fn_ref": ref}, project, client=client, progress=progress)
        times["auto-refine"] = time.perf_counter() - t1
    finally:
        if client is not None:
            close_if_owned(client)
    model = read_star(rf_dir / "run_model.star")
    general = model["model_general"]
    final_map, pix = read_map(rf_dir / "run_class001.mrc")
    frame = None
    if initial_model:
        # a de novo model has a frame of its own: the poses compare with the truth's once it is superposed
        from subtomo_nb.initial_model.compare import superpose

        s = superpose(np.asarray(final_map, np.float64), np.asarray(read_map(sim["map"])[0], np.float64), float(pix))
        out["refined_hand"] = "same" if not s.mirrored else "mirrored"
        frame = np.asarray(s.matrix)
    ang, trans = pose_errors(rf_dir / "run_data.star", sim["particles_true"], "C6", float(pix), frame=frame)
    if frame is not None and out["refined_hand"] == "mirrored":
        ang = np.full_like(ang, np.nan)   # the other hand: no rotation takes these poses onto the truth's
    iterations = [e for e in read_progress(rf_dir) if e.iteration is not None and e.resolution_A is not None]
    sampling = read_star(rf_dir / "run_sampling.star")
    out["reference"] = ref
    out["refined_map"] = project_relative(rf_dir / "run_class001.mrc", project)
    out["refined_resolution_A"] = float(general["rlnCurrentResolution"])
    out["iterations"] = len(iterations)
    out["ini_high_A"] = float(refine_values["ini_high"])
    optimiser = read_star(rf_dir / "run_optimiser.star")["optimiser_general"]
    out["accuracy_rot_deg"] = float(optimiser["rlnOverallAccuracyRotations"])
    out["fine_step_deg"] = _fine_step(sampling)
    out["median_angular_error_deg"] = float(np.median(ang))
    out["median_translation_error_px"] = float(np.median(trans))
    return out


def _fine_step(sampling: dict) -> float:
    """The final angular sampling step (degrees, oversampled once) of a ``run_sampling.star``."""
    from subtomo_nb.geometry.healpix import angular_step

    return angular_step(int(sampling["sampling_general"]["rlnHealpixOrder"]), 1)
