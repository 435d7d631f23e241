"""RELION-named output files of 3D auto-refine (relion-conventions.md §6.14).

Per iteration ``NNN`` (000 = the starting point): ``run_itNNN_half{1,2}_class001.mrc``,
``run_itNNN_half{1,2}_model.star``, ``run_itNNN_data.star``, ``run_itNNN_optimiser.star``,
``run_itNNN_sampling.star``, ``run_itNNN_optimisation_set.star``. At convergence, without the
iteration: ``run_class001.mrc``, ``run_half{1,2}_class001_unfil.mrc``, ``run_model.star``,
``run_data.star``, ``run_optimiser.star``, ``run_sampling.star``, ``run_optimisation_set.star``.
Tables and labels as RELION writes them (checked against its own outputs in the tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from subtomo_nb.geometry.healpix import psi_step, sampling_directions
from subtomo_nb.io.mrc import write_map
from subtomo_nb.io.optimisation_set import OptimisationSet, write_optimisation_set
from subtomo_nb.io.particles import ParticleSet, write_particles
from subtomo_nb.io.star import write_star

if TYPE_CHECKING:  # pragma: no cover
    from subtomo_nb.refine.autorefine import AutoRefine


def _names(root: Path, iteration: int | None) -> dict[str, Path]:
    tag = "" if iteration is None else f"_it{iteration:03d}"
    base = f"{root}{tag}"
    return {
        "half1_map": Path(f"{base}_half1_class001.mrc"), "half2_map": Path(f"{base}_half2_class001.mrc"),
        "half1_model": Path(f"{base}_half1_model.star"), "half2_model": Path(f"{base}_half2_model.star"),
        "model": Path(f"{base}_model.star"), "data": Path(f"{base}_data.star"),
        "optimiser": Path(f"{base}_optimiser.star"), "sampling": Path(f"{base}_sampling.star"),
        "optimisation_set": Path(f"{base}_optimisation_set.star"), "map": Path(f"{base}_class001.mrc"),
        "half1_unfil": Path(f"{base}_half1_class001_unfil.mrc"), "half2_unfil": Path(f"{base}_half2_class001_unfil.mrc"),
    }


def model_blocks(job: "AutoRefine", half: int, map_name: str) -> dict:
    """The ``_model.star`` tables of one half-set (or the joined model with ``half=0``)."""
    s = job.state
    h = job.halves[max(half, 1) - 1]
    n = job.box
    shells = np.arange(n // 2 + 1)
    res_inv = shells / (n * job.pix)
    ang = np.where(shells > 0, n * job.pix / np.maximum(shells, 1), 999.0)
    fsc = s.fsc if s.fsc is not None else np.zeros(len(shells))
    ssnr = h.ssnr if h.ssnr is not None else np.zeros(len(shells))
    tau2 = h.tau2 if h.tau2 is not None else np.zeros(len(shells))
    est = ang[np.flatnonzero(ssnr >= 1.0)[-1]] if (ssnr >= 1.0).any() else 999.0
    general = {
        "rlnReferenceDimensionality": 3, "rlnDataDimensionality": 3, "rlnOriginalImageSize": n,
        "rlnCurrentResolution": float(s.current_resolution), "rlnCurrentImageSize": int(s.current_size),
        "rlnPaddingFactor": float(job.opts.pad), "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1,
        "rlnMinRadiusNnInterpolation": 10, "rlnPixelSize": float(job.pix), "rlnNrClasses": 1, "rlnNrBodies": 1,
        "rlnNrGroups": 1, "rlnNrOpticsGroups": int(len(job.pset.optics)), "rlnTau2FudgeFactor": float(job.opts.tau2_fudge),
        "rlnNormCorrectionAverage": 1.0, "rlnSigmaOffsetsAngst": float(s.sigma_offset_A),
        "rlnOrientationalPriorMode": int(s.sampling.is_local or s.sampling.sigma_tilt > 0),
        "rlnSigmaPriorRotAngle": float(s.sampling.sigma_rot), "rlnSigmaPriorTiltAngle": float(s.sampling.sigma_tilt),
        "rlnSigmaPriorPsiAngle": float(s.sampling.sigma_psi), "rlnLogLikelihood": float(s.log_likelihood),
        "rlnAveragePmax": float(s.ave_pmax),
    }
    classes = pd.DataFrame({
        "rlnReferenceImage": [map_name], "rlnClassDistribution": [1.0],
        "rlnAccuracyRotations": [float(s.acc_rot)], "rlnAccuracyTranslationsAngst": [float(s.acc_trans_A)],
        "rlnEstimatedResolution": [float(est)], "rlnOverallFourierCompleteness": [float(np.mean(fsc > 0.143))],
    })
    spectra = pd.DataFrame({
        "rlnSpectralIndex": shells, "rlnResolution": res_inv, "rlnAngstromResolution": ang,
        "rlnSsnrMap": ssnr, "rlnGoldStandardFsc": fsc, "rlnFourierCompleteness": (fsc > 0.143).astype(float),
        "rlnReferenceSigma2": h.sigma2, "rlnReferenceTau2": tau2,
        "rlnSpectralOrientabilityContribution": np.zeros(len(shells)),
    })
    rows = h.rows if half else np.arange(len(job.pset.particles))
    groups = pd.DataFrame({"rlnGroupNumber": [1], "rlnGroupName": ["group_1"],
                           "rlnGroupNrParticles": [int(len(rows))], "rlnGroupScaleCorrection": [1.0]})
    blocks = {"model_general": general, "model_classes": classes, "model_class_1": spectra, "model_groups": groups}
    ok = h.sigma2 > 0
    for g in job.pset.optics["rlnOpticsGroup"]:
        blocks[f"model_optics_group_{int(g)}"] = pd.DataFrame({
            "rlnSpectralIndex": shells[ok], "rlnResolution": res_inv[ok], "rlnSigma2Noise": h.sigma2[ok]})
    return blocks


def data_particle_set(job: "AutoRefine") -> ParticleSet:
    """The particle set with the current poses and RELION's per-particle statistics."""
    return job.poses.particle_set(job.pset, {"rlnClassNumber": 1, "rlnNormCorrection": 1.0})


def optimiser_block(job: "AutoRefine", names: dict[str, Path], iteration: int) -> dict:
    """``data_optimiser_general`` with the labels that describe and resume the run."""
    s, o = job.state, job.opts
    return {
        "rlnOutputRootName": str(job.root), "rlnModelStarFile": str(names["half1_model"]),
        "rlnModelStarFile2": str(names["half2_model"]), "rlnExperimentalDataStarFile": str(names["data"]),
        "rlnOrientSamplingStarFile": str(names["sampling"]),
        "rlnTomoTomogramsFile": str(o.tomograms or ""), "rlnTomoTrajectoriesFile": "",
        "rlnCurrentIteration": int(iteration), "rlnNumberOfIterations": int(o.auto_iter_max),
        "rlnDoSplitRandomHalves": 1, "rlnJoinHalvesUntilThisResolution": float(o.low_resol_join_halves),
        "rlnAdaptiveOversampleOrder": int(s.sampling.oversampling), "rlnAdaptiveOversampleFraction": 0.999,
        "rlnRandomSeed": int(o.random_seed), "rlnParticleDiameter": float(o.particle_diameter),
        "rlnWidthMaskEdge": 5, "rlnDoZeroMask": int(o.zero_mask), "rlnDoSolventFlattening": int(o.flatten_solvent),
        "rlnDoSolventFscCorrection": 0, "rlnSolventMaskName": str(o.solvent_mask or "None"),
        "rlnIncrementImageSize": int(s.incr_size), "rlnDoMapEstimation": 1, "rlnDoAutoRefine": 1,
        "rlnDoAutoSampling": 1, "rlnAutoLocalSearchesHealpixOrder": int(o.auto_local_healpix_order),
        "rlnNumberOfIterWithoutResolutionGain": int(s.nr_iter_wo_resol_gain),
        "rlnBestResolutionThusFar": float(1.0 / s.best_resolution),
        "rlnNumberOfIterWithoutChangingAssignments": int(s.nr_iter_wo_hidden_changes),
        "rlnOverallAccuracyRotations": float(s.acc_rot), "rlnOverallAccuracyTranslationsAngst": float(s.acc_trans_A),
        "rlnChangesOptimalOrientations": float(s.change_orientations),
        "rlnChangesOptimalOffsets": float(s.change_offsets_A), "rlnChangesOptimalClasses": 0.0,
        "rlnSmallestChangesOrientations": float(s.smallest_change_orientations),
        "rlnSmallestChangesOffsets": float(s.smallest_change_offsets_A),
        "rlnHasConverged": int(s.has_converged), "rlnHasHighFscAtResolLimit": int(s.has_high_fsc_at_limit),
        "rlnDoCorrectCtf": int(o.ctf), "rlnDoIgnoreCtfUntilFirstPeak": 0,
        "rlnRefsAreCtfCorrected": 1, "rlnDoGradientRefine": 0,
    }


def sampling_blocks(job: "AutoRefine") -> dict:
    """``_sampling.star``: sampling parameters and the HEALPix directions of the asymmetric unit."""
    smp = job.state.sampling
    rot, tilt, _ = sampling_directions(smp.healpix_order, smp.sym)
    general = {
        "rlnIs3DSampling": 1, "rlnIs3DTranslationalSampling": 1, "rlnHealpixOrder": int(smp.healpix_order),
        "rlnSymmetryGroup": smp.sym, "rlnTiltAngleLimit": -91.0, "rlnPsiStep": float(psi_step(smp.healpix_order)),
        "rlnOffsetRange": float(smp.offset_range_A), "rlnOffsetStep": float(smp.offset_step_A),
        "rlnHelicalOffsetStep": -1.0, "rlnSamplingPerturbInstance": 0.0, "rlnSamplingPerturbFactor": 0.5,
        "rlnHealpixOrderOriginal": int(job.opts.healpix_order),
        "rlnPsiStepOriginal": float(psi_step(job.opts.healpix_order)),
        "rlnOffsetRangeOriginal": float(job.opts.offset_range_px * job.pix),
        "rlnOffsetStepOriginal": float(job.opts.offset_step_px * job.pix),
    }
    return {"sampling_general": general, "sampling_directions": pd.DataFrame({"rlnAngleRot": rot, "rlnAngleTilt": tilt})}


def write_iteration(job: "AutoRefine", *, final: bool, initial: bool = False, final_map=None, unfil=None) -> dict:
    """Write one iteration's files (``initial``: iteration 0; ``final``: the converged outputs)."""
    it = 0 if initial else job.state.iteration
    names = _names(job.root, None if final else it)
    pix = job.pix
    if final:
        write_map(names["map"], np.asarray(final_map, np.float32), pix)
        for h, vol in zip((1, 2), unfil):
            write_map(names[f"half{h}_unfil"], np.asarray(vol, np.float32), pix)
        write_star(names["model"], model_blocks(job, 0, str(names["map"])))
        names["half1_model"] = names["half2_model"] = names["model"]
    else:
        for h in (1, 2):
            write_map(names[f"half{h}_map"], np.asarray(job.halves[h - 1].reference, np.float32), pix)
            write_star(names[f"half{h}_model"], model_blocks(job, h, str(names[f"half{h}_map"])))
    write_particles(names["data"], data_particle_set(job), require_tomo=False)
    write_star(names["sampling"], sampling_blocks(job))
    write_star(names["optimiser"], {"optimiser_general": optimiser_block(job, names, it)})
    oset = OptimisationSet({"rlnTomoParticlesFile": str(names["data"]),
                            "rlnTomoTomogramsFile": str(job.opts.tomograms or ""), "rlnTomoTrajectoriesFile": ""})
    write_optimisation_set(names["optimisation_set"], oset)
    if not final:
        from subtomo_nb.refine.state import save_state, state_path

        names["state"] = save_state(job, state_path(names["optimiser"]))
    return names
