"""RELION-named output files of the VDAM initial model (relion-conventions.md §6.14, §8.1).

Every ``--grad_write_iter`` (10) iterations, at iteration 0 and at the last one::

    run_itNNN_classKKK.mrc      one map per class
    run_itNNN_data.star         particles with poses, rlnClassNumber and RELION's statistics
    run_itNNN_model.star        model_general, model_classes (rlnReferenceImage,
                                rlnClassDistribution, rlnEstimatedResolution, ...),
                                model_class_K per class, model_groups, model_optics_group_g
    run_itNNN_optimiser.star    optimiser_general with the gradient schedule labels

Then ``initial_model.mrc`` -- the largest class aligned onto the symmetry axes and symmetrised
(``relion_align_symmetry --sym G --apply_sym --select_largest_class``) when run in C1, else the
largest class as it is, in both cases centred on its positive density first (see
:func:`centre_positive_mass`) -- and ``run_optimisation_set.star`` (the last data.star and the tomogram
set), beside the ``run`` root. File names inside the STAR files are relative to the project
directory when the files lie under it (RELION's convention), else as written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from subtomo_nb.io._paths import project_relative
from subtomo_nb.io.mrc import write_map
from subtomo_nb.io.optimisation_set import OptimisationSet, write_optimisation_set
from subtomo_nb.io.particles import ParticleSet, write_particles
from subtomo_nb.io.star import write_star

if TYPE_CHECKING:  # pragma: no cover
    from subtomo_nb.initial_model.vdam import InitialModel

__all__ = ["align_to_symmetry_axes", "centre_positive_mass", "finish_job", "iteration_names", "model_blocks", "optimiser_block", "write_iteration"]


def iteration_names(root: str | os.PathLike, iteration: int, n_classes: int) -> dict[str, Path]:
    """``run_itNNN_*`` paths of one iteration (``class1`` .. ``classK`` for the maps)."""
    base = f"{root}_it{iteration:03d}"
    names = {"data": Path(f"{base}_data.star"), "model": Path(f"{base}_model.star"),
             "optimiser": Path(f"{base}_optimiser.star")}
    for k in range(1, n_classes + 1):
        names[f"class{k}"] = Path(f"{base}_class{k:03d}.mrc")
    return names


def model_blocks(job: InitialModel, names: dict[str, Path]) -> dict:
    """The ``_model.star`` tables (one ``model_class_K`` per class)."""
    s, o = job.state, job.opts
    n = job.box
    shells = np.arange(n // 2 + 1)
    res_inv = shells / (n * job.pix)
    ang = np.where(shells > 0, n * job.pix / np.maximum(shells, 1), 999.0)
    K = len(job.classes_model)
    general = {
        "rlnReferenceDimensionality": 3, "rlnDataDimensionality": 3, "rlnOriginalImageSize": n,
        "rlnCurrentResolution": float(s.current_resolution), "rlnCurrentImageSize": int(s.current_size),
        "rlnPaddingFactor": float(o.pad), "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1,
        "rlnMinRadiusNnInterpolation": 10, "rlnPixelSize": float(job.pix), "rlnNrClasses": K, "rlnNrBodies": 1,
        "rlnNrGroups": 1, "rlnNrOpticsGroups": len(job.pset.optics), "rlnTau2FudgeFactor": float(s.tau2_fudge),
        "rlnNormCorrectionAverage": 1.0, "rlnSigmaOffsetsAngst": float(s.sigma_offset_A),
        "rlnOrientationalPriorMode": int(s.sampling.sigma_tilt > 0), "rlnSigmaPriorRotAngle": 0.0,
        "rlnSigmaPriorTiltAngle": float(s.sampling.sigma_tilt), "rlnSigmaPriorPsiAngle": 0.0,
        "rlnLogLikelihood": float(s.log_likelihood), "rlnAveragePmax": float(s.ave_pmax),
    }
    classes = pd.DataFrame({
        "rlnReferenceImage": [project_relative(names[f"class{k + 1}"], o.project_dir) for k in range(K)],
        "rlnClassDistribution": [float(c.pdf) for c in job.classes_model],
        "rlnAccuracyRotations": [float(s.acc_rot)] * K,
        "rlnAccuracyTranslationsAngst": [float(s.acc_trans_A)] * K,
        "rlnEstimatedResolution": [float(c.estimated_resolution) for c in job.classes_model],
        "rlnOverallFourierCompleteness": [float(np.mean(c.ssnr >= 1.0)) if c.ssnr is not None else 0.0
                                          for c in job.classes_model],
    })
    blocks: dict = {"model_general": general, "model_classes": classes}
    zeros = np.zeros(len(shells))
    for k, c in enumerate(job.classes_model):
        ssnr = zeros if c.ssnr is None else np.asarray(c.ssnr, float)
        tau2 = zeros if c.tau2 is None else np.asarray(c.tau2, float)[: len(shells)]
        with np.errstate(divide="ignore", invalid="ignore"):
            sigma2_rec = np.where(ssnr > 0, tau2 * s.tau2_fudge * job.avg_ctf2 / np.where(ssnr > 0, ssnr, 1), 0.0)
        blocks[f"model_class_{k + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": shells, "rlnResolution": res_inv, "rlnAngstromResolution": ang,
            "rlnSsnrMap": ssnr, "rlnGoldStandardFsc": zeros, "rlnFourierCompleteness": (ssnr >= 1.0).astype(float),
            "rlnReferenceSigma2": sigma2_rec, "rlnReferenceTau2": tau2, "rlnSpectralOrientabilityContribution": zeros,
        })
    blocks["model_groups"] = pd.DataFrame({"rlnGroupNumber": [1], "rlnGroupName": ["group_1"],
                                           "rlnGroupNrParticles": [int(job.n)], "rlnGroupScaleCorrection": [1.0]})
    ok = job.sigma2 > 0
    for g in job.pset.optics["rlnOpticsGroup"]:
        blocks[f"model_optics_group_{int(g)}"] = pd.DataFrame({
            "rlnSpectralIndex": shells[ok], "rlnResolution": res_inv[ok], "rlnSigma2Noise": job.sigma2[ok]})
    return blocks


def data_particle_set(job: InitialModel) -> ParticleSet:
    """The particle set with the current poses, classes and RELION's per-particle statistics."""
    return job.poses.particle_set(job.pset, {"rlnClassNumber": job.classes.astype(np.int64),
                                             "rlnNormCorrection": 1.0, "rlnGroupNumber": 1})


def optimiser_block(job: InitialModel, names: dict[str, Path]) -> dict:
    """``data_optimiser_general``: the run's settings, state and gradient schedule."""
    from subtomo_nb.initial_model.schedules import subset_sizes

    s, o = job.state, job.opts
    ini, fin = subset_sizes(job.n, o.grad_ini_subset, o.grad_fin_subset)
    from subtomo_nb.initial_model.vdam import INCR_SIZE

    incr = INCR_SIZE
    if job.fast is not None:   # what the run did: --fast's image-size increment and constant mini-batch
        incr = job.fast.incr_size
        fin = ini if job.fast.subset is not None else fin
    return {
        "rlnOutputRootName": project_relative(job.root, o.project_dir),
        "rlnModelStarFile": project_relative(names["model"], o.project_dir),
        "rlnExperimentalDataStarFile": project_relative(names["data"], o.project_dir),
        "rlnTomoTomogramsFile": project_relative(tomograms_file(job), o.project_dir) if tomograms_file(job) else "",
        "rlnTomoTrajectoriesFile": "",
        "rlnCurrentIteration": int(s.iteration), "rlnNumberOfIterations": int(o.nr_iter),
        "rlnDoSplitRandomHalves": 0, "rlnJoinHalvesUntilThisResolution": -1.0,
        "rlnAdaptiveOversampleOrder": int(s.sampling.oversampling), "rlnAdaptiveOversampleFraction": 0.999,
        "rlnRandomSeed": int(o.random_seed), "rlnParticleDiameter": float(o.particle_diameter),
        "rlnWidthMaskEdge": 5, "rlnDoZeroMask": int(o.zero_mask), "rlnDoSolventFlattening": int(o.flatten_solvent),
        "rlnSolventMaskName": "None", "rlnIncrementImageSize": int(incr), "rlnDoMapEstimation": 1, "rlnDoAutoRefine": 0,
        "rlnDoAutoSampling": 1, "rlnAutoLocalSearchesHealpixOrder": int(o.auto_local_healpix_order),
        "rlnNumberOfIterWithoutResolutionGain": int(s.nr_iter_wo_resol_gain),
        "rlnBestResolutionThusFar": float(1.0 / s.best_resolution),
        "rlnOverallAccuracyRotations": float(s.acc_rot), "rlnOverallAccuracyTranslationsAngst": float(s.acc_trans_A),
        "rlnChangesOptimalOrientations": float(s.change_orientations),
        "rlnChangesOptimalOffsets": float(s.change_offsets_A), "rlnChangesOptimalClasses": 0.0,
        "rlnHasConverged": 0, "rlnDoCorrectCtf": int(o.ctf), "rlnDoIgnoreCtfUntilFirstPeak": int(o.ctf_intact_first_peak),
        "rlnRefsAreCtfCorrected": 1,
        "rlnDoGradientRefine": 1, "rlnDoStochasticGradientDescent": 0, "rlnGradEmIters": 0,
        "rlnGradHasConverged": 0, "rlnGradCurrentStepsize": float(s.step),
        "rlnSgdInitialIterationsFraction": float(o.grad_ini_frac), "rlnSgdFinalIterationsFraction": float(o.grad_fin_frac),
        "rlnSgdInitialSubsetSize": int(ini), "rlnSgdFinalSubsetSize": int(fin), "rlnSgdSubsetSize": int(s.subset),
        "rlnSgdMuFactor": float(o.mu), "rlnSgdStepsize": float(o.grad_stepsize),
        "rlnSgdStepsizeScheme": f"{o.grad_stepsize * o.grad_stepsize_inflate:g}-step",
        "rlnTau2FudgeScheme": f"{o.tau2_fudge:g}-step", "rlnTau2FudgeArg": float(o.tau2_fudge),
        "rlnSgdWriteEverySubset": int(o.grad_write_iter), "rlnSgdClassInactivityThreshold": 0.0,
    }


def centre_positive_mass(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift a map so that the centre of its positive density is the box centre ``N // 2``.

    Returns the shifted map (Fourier shift, periodic: the solvent outside the mask is flat) and
    the shift ``(x, y, z)`` in pixels.
    """
    from subtomo_nb.fourier.fft import irfft3, rfft3, shift_half
    from subtomo_nb.initial_model.map_geometry import centre_of_mass

    v = np.asarray(volume, dtype=np.float64)
    pos = np.maximum(v, 0.0)
    if pos.sum() <= 0:
        return v.copy(), np.zeros(3)
    com = centre_of_mass(pos)
    return irfft3(shift_half(rfft3(v), -com), v.shape[0]), -com


def tomograms_file(job: InitialModel) -> Path | None:
    """The tomogram set of the run: ``--tomograms``, else the input optimisation set's."""
    from subtomo_nb.tasks.particle_data import input_files

    return input_files(job.opts.particles, job.opts.tomograms).get("rlnTomoTomogramsFile")


def write_iteration(job: InitialModel) -> dict[str, Path]:
    """Write the current iteration's maps, data, model and optimiser files; returns their paths.

    The class maps are copied from the job's backend (``"map"``); everything else is on the host.
    """
    it = job.state.iteration
    names = iteration_names(job.root, it, len(job.classes_model))
    for k, c in enumerate(job.classes_model):
        # the class maps live on the job's backend: they come to the host only to be written
        write_map(names[f"class{k + 1}"], job.backend.to_host(c.reference, "map").astype(np.float32), job.pix)
    write_particles(names["data"], data_particle_set(job), require_tomo=False)
    write_star(names["model"], model_blocks(job, names))
    write_star(names["optimiser"], {"optimiser_general": optimiser_block(job, names)})
    job.last_written = names
    return names


#: Independent starts of relion_align_symmetry's random global search (see align_to_symmetry_axes).
ALIGN_STARTS = 4


def align_to_symmetry_axes(volume: np.ndarray, sym: str, pixel_size_A: float, *, seed: int = 0,
                           n_starts: int = ALIGN_STARTS, progress: object = None) -> object:
    """``relion_align_symmetry --apply_sym`` made robust: several starts, then a continuous refinement.

    RELION's search (400 random orientations, then a ±2-step local grid) misses the C6 axis of a
    box-32 VDAM map for about half the seeds: a false basin ~48° away scores within a few percent
    of the true one, and the local grid stops short of the true minimum. Here the search runs from
    ``n_starts`` seeds, the lowest diff2 is kept, that orientation is refined by Powell's method
    on the same score (:func:`~subtomo_nb.initial_model.symmetry_search.symmetry_scores`), and the
    map is rotated and symmetrised as ``align_symmetry`` does. C1 returns the map unchanged.

    Returns
    -------
    :class:`~subtomo_nb.initial_model.align_symmetry.AlignResult` (``score`` after refinement).
    """
    from scipy import optimize

    from subtomo_nb.fourier.projector import Projector
    from subtomo_nb.geometry.symmetry import point_group, symmetrise_map
    from subtomo_nb.initial_model.align_symmetry import align_symmetry
    from subtomo_nb.initial_model.map_geometry import rotate_map
    from subtomo_nb.initial_model.symmetry_search import symmetry_scores

    say = progress if callable(progress) else (lambda msg: None)
    results = [align_symmetry(volume, sym, pixel_size_A, keep_centre=True, apply_sym=False, seed=seed + i,
                              progress=say if i == 0 else None) for i in range(max(1, n_starts))]
    best = min(results, key=lambda r: r.score)
    if best.working_box == 0:  # C1: the map as it is
        return best
    ops = point_group(sym)
    proj = Projector(np.asarray(volume, np.float32), pad=2)
    res = optimize.minimize(lambda a: float(symmetry_scores(proj, a[None, :], ops)[0]),
                            np.array([best.rot, best.tilt, best.psi]), method="Powell",
                            options={"xtol": 0.05, "ftol": 1e-9, "maxfev": 2000})
    rot, tilt, psi = (float(x) for x in res.x)
    say(f"{len(results)} starts, lowest diff2 {best.score:.6g}; refined to rot {rot:.2f} tilt {tilt:.2f} "
        f"psi {psi:.2f} (diff2 {float(res.fun):.6g})")
    best.volume = np.asarray(symmetrise_map(rotate_map(volume, rot, tilt, psi), ops), np.float32)
    best.rot, best.tilt, best.psi, best.score = rot, tilt, psi, float(res.fun)
    return best


def finish_job(job: InitialModel) -> dict[str, Path]:
    """``initial_model.mrc`` (aligned to the symmetry axes when run in C1) and ``run_optimisation_set.star``."""
    from subtomo_nb.io.model_star import class_maps_from_model
    from subtomo_nb.io.mrc import read_map

    o = job.opts
    names = job.last_written
    out_dir = Path(job.root).parent
    sym = o.sym if (o.run_in_c1 and o.sym.upper() != "C1") else "C1"
    project = o.project_dir if o.project_dir is not None else Path.cwd()
    source = class_maps_from_model(names["model"], select_largest_class=True, project_dir=project)[0]
    vol, _ = read_map(source)
    # relion_align_symmetry moves the centre of mass to the box centre first; a VDAM map has
    # almost no net mass (CTF-weighted data carry little of the zero frequency), so the signed
    # centre of mass can lie far outside the box. The positive density's centre is used instead.
    # C1 (no symmetry to align to): relion_align_symmetry writes the map as it is, so no centring
    if sym.upper() != "C1":
        vol, shift = centre_positive_mass(np.asarray(vol, np.float64))
    else:
        shift = np.zeros(3)
    result = align_to_symmetry_axes(vol, sym, job.pix, seed=o.random_seed,
                                    progress=lambda msg: job.progress({"kind": "message", "message": str(msg)}))
    result.source, result.centre_shift_px = source, tuple(float(x) for x in shift)
    job.alignment = result
    initial = out_dir / "initial_model.mrc"
    write_map(initial, np.asarray(result.volume, np.float32), job.pix)
    oset = OptimisationSet({"rlnTomoParticlesFile": project_relative(names["data"], o.project_dir)})
    tomo = tomograms_file(job)
    if tomo is not None:
        oset["rlnTomoTomogramsFile"] = project_relative(tomo, o.project_dir)
    oset_path = Path(f"{job.root}_optimisation_set.star")
    write_optimisation_set(oset_path, oset)
    out = {"initial_model": initial, "optimisation_set": oset_path, "data": names["data"], "model": names["model"],
           "optimiser": names["optimiser"]}
    for k in range(len(job.classes_model)):
        out[f"class{k + 1}"] = names[f"class{k + 1}"]
    return out
