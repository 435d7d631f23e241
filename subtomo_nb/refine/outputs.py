"""RELION-named output files of 3D auto-refine (relion-conventions.md §6.14).

Per iteration ``NNN`` (000 = the starting point): ``run_itNNN_half{1,2}_class001.mrc``,
``run_itNNN_half{1,2}_model.star``, ``run_itNNN_data.star``, ``run_itNNN_optimiser.star``,
``run_itNNN_sampling.star``, ``run_itNNN_optimisation_set.star``,
``run_itNNN_half{1,2}_class001_angdist.bild``. At convergence, without the iteration:
``run_class001.mrc``, ``run_half{1,2}_class001_unfil.mrc``, ``run_model.star``, ``run_data.star``,
``run_optimiser.star``, ``run_sampling.star``, ``run_optimisation_set.star``,
``run_class001_angdist.bild``. Tables and labels as RELION writes them (checked against its own
outputs in the tests); file names in them relative to the project directory, as RELION writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from subtomo_nb.geometry.healpix import angular_step, direction_vectors, psi_step, sampling_directions
from subtomo_nb.geometry.symmetry import point_group
from subtomo_nb.io._paths import project_relative
from subtomo_nb.io.mrc import write_map
from subtomo_nb.io.optimisation_set import OPTIMISATION_SET_LABELS, OptimisationSet, write_optimisation_set
from subtomo_nb.io.particles import ParticleSet, write_particles
from subtomo_nb.io.star import _atomic_write_text, write_star

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
        "half1_bild": Path(f"{base}_half1_class001_angdist.bild"),
        "half2_bild": Path(f"{base}_half2_class001_angdist.bild"), "bild": Path(f"{base}_class001_angdist.bild"),
    }


def _rel(job: "AutoRefine", path: str | Path) -> str:
    """A file name as written in the STAR outputs: relative to the project directory (RELION's)."""
    return project_relative(path, job.opts.project_dir)


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
    # the reconstruction's noise power (1 / mean back-projected weight), not the particles' noise
    ref_sigma2 = h.ref_sigma2 if h.ref_sigma2 is not None else np.zeros(len(shells))
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
        "rlnReferenceSigma2": ref_sigma2, "rlnReferenceTau2": tau2,
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
    inputs = input_names(job)
    return {
        "rlnOutputRootName": _rel(job, job.root), "rlnModelStarFile": _rel(job, names["half1_model"]),
        "rlnModelStarFile2": _rel(job, names["half2_model"]), "rlnExperimentalDataStarFile": _rel(job, names["data"]),
        "rlnOrientSamplingStarFile": _rel(job, names["sampling"]),
        "rlnTomoTomogramsFile": inputs.get("rlnTomoTomogramsFile", ""),
        "rlnTomoTrajectoriesFile": inputs.get("rlnTomoTrajectoriesFile", ""),
        "rlnCurrentIteration": int(iteration), "rlnNumberOfIterations": int(o.auto_iter_max),
        "rlnDoSplitRandomHalves": 1, "rlnJoinHalvesUntilThisResolution": float(o.low_resol_join_halves),
        "rlnAdaptiveOversampleOrder": int(s.sampling.oversampling), "rlnAdaptiveOversampleFraction": 0.999,
        "rlnRandomSeed": int(o.random_seed), "rlnParticleDiameter": float(o.particle_diameter),
        "rlnWidthMaskEdge": 5, "rlnDoZeroMask": int(o.zero_mask), "rlnDoSolventFlattening": int(o.flatten_solvent),
        "rlnDoSolventFscCorrection": 0,
        "rlnSolventMaskName": _rel(job, o.solvent_mask) if o.solvent_mask else "None",
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
    """Write one iteration's files (``initial``: iteration 0; ``final``: the converged outputs).

    The maps (``final_map``, ``unfil`` and the half-set references: device arrays of the job's
    backend) come to the host here, once each (``"map"``).
    """
    it = 0 if initial else job.state.iteration
    names = _names(job.root, None if final else it)
    pix = job.pix
    be = job.backend
    if final:
        write_map(names["map"], np.asarray(be.to_host(final_map, "map"), np.float32), pix)
        for h, vol in zip((1, 2), unfil):
            write_map(names[f"half{h}_unfil"], np.asarray(be.to_host(vol, "map"), np.float32), pix)
        write_star(names["model"], model_blocks(job, 0, _rel(job, names["map"])))
        write_angdist_bild(names["bild"], job, np.arange(len(job.pset.particles)))
        names["half1_model"] = names["half2_model"] = names["model"]
    else:
        for h in (1, 2):
            write_map(names[f"half{h}_map"], np.asarray(job.halves[h - 1].host_reference(be), np.float32), pix)
            write_star(names[f"half{h}_model"], model_blocks(job, h, _rel(job, names[f"half{h}_map"])))
            write_angdist_bild(names[f"half{h}_bild"], job, job.halves[h - 1].rows)
    write_particles(names["data"], data_particle_set(job), require_tomo=False)
    write_star(names["sampling"], sampling_blocks(job))
    write_star(names["optimiser"], {"optimiser_general": optimiser_block(job, names, it)})
    write_optimisation_set(names["optimisation_set"], output_optimisation_set(job, names, final=final))
    if not final:
        from subtomo_nb.refine.state import save_state, state_path

        names["state"] = save_state(job, state_path(names["optimiser"]))
    return names


def input_names(job: "AutoRefine") -> dict[str, str]:
    """The input's optimisation-set entries (``--ios``, or ``--i`` with ``--tomograms``), project-relative."""
    from subtomo_nb.tasks.particle_data import input_files

    return {label: _rel(job, path) for label, path in input_files(job.opts.particles, job.opts.tomograms).items()}


def output_optimisation_set(job: "AutoRefine", names: dict[str, Path], *, final: bool) -> OptimisationSet:
    """``run_[itNNN_]optimisation_set.star``: the input's set with this run's particles (``MlOptimiser::write``).

    The input's tomograms, trajectories and manifolds stay; at convergence, as RELION, the unfiltered
    half maps become the reference maps (and the solvent mask the reference mask); a reference FSC
    file of the input is dropped (it belongs to other maps).
    """
    entries = input_names(job)
    entries["rlnTomoParticlesFile"] = _rel(job, names["data"])
    entries.setdefault("rlnTomoTomogramsFile", "")
    entries.setdefault("rlnTomoTrajectoriesFile", "")
    for label in ("rlnTomoReferenceMap1File", "rlnTomoReferenceMap2File", "rlnTomoReferenceMaskFile",
                  "rlnTomoReferenceFscFile"):
        entries.pop(label, None)
    if final:
        entries["rlnTomoReferenceMap1File"] = _rel(job, names["half1_unfil"])
        entries["rlnTomoReferenceMap2File"] = _rel(job, names["half2_unfil"])
        if job.opts.solvent_mask:
            entries["rlnTomoReferenceMaskFile"] = _rel(job, job.opts.solvent_mask)
    order = [k for k in OPTIMISATION_SET_LABELS if k in entries] + [k for k in entries if k not in OPTIMISATION_SET_LABELS]
    return OptimisationSet({k: entries[k] for k in order})


def direction_counts(job: "AutoRefine", rows: np.ndarray) -> np.ndarray:
    """Particles of ``rows`` per HEALPix direction of the current sampling (its asymmetric unit).

    Each particle's projection direction (``Euler_angles2direction`` of its rot, tilt) counts for the
    nearest sampling direction, over all its symmetry mates. RELION's ``pdf_direction`` sums the
    posterior probabilities instead; with the peaked posteriors of a refinement the two agree.
    """
    smp = job.state.sampling
    rot, tilt, _ = sampling_directions(smp.healpix_order, smp.sym)
    grid = direction_vectors(rot, tilt)                                   # (D, 3)
    ops = np.asarray(point_group(smp.sym), dtype=np.float64)              # (G, 3, 3)
    counts = np.zeros(len(grid), dtype=np.int64)
    angles = np.asarray(job.poses.angles, dtype=np.float64)[np.asarray(rows, dtype=np.int64)]
    # particles per chunk: the (G, P, D) products stay near 2**22 values (32 MB) at any HEALPix order
    chunk = max(1, min(512, (1 << 22) // max(len(ops) * len(grid), 1)))
    for start in range(0, len(angles), chunk):
        d = direction_vectors(angles[start:start + chunk, 0], angles[start:start + chunk, 1])   # (P, 3)
        mates = np.einsum("gij,pj->gpi", ops, d)                                             # (G, P, 3)
        best = np.einsum("gpi,di->gpd", mates, grid).max(axis=0)                             # (P, D)
        np.add.at(counts, best.argmax(axis=1), 1)
    return counts


def angdist_bild(pdf: np.ndarray, rot: np.ndarray, tilt: np.ndarray, radius: float, offset: float,
                 angular_sampling: float, rmax_frac: float = 0.3, width_frac: float = 0.5) -> str:
    """The text of RELION's ``_angdist.bild`` (``HealpixSampling::writeBildFileOrientationalDistribution``).

    One ``.color`` / ``.cylinder`` pair per direction with ``pdf > 0`` (and a non-negligible
    length): from ``radius`` to ``radius * (1 + rmax_frac * pdf / max(pdf))`` along the direction,
    shifted by ``offset`` in x, y and z, of radius ``width_frac * pi * radius * angular_sampling /
    360``; coloured from blue (pdf at or below mean - sigma) to red (mean + 5 sigma), with
    RELION's statistics (``computeStats``: its integer ``N / (N - 1)`` factor included).
    """
    pdf = np.asarray(pdf, dtype=np.float64)
    n = pdf.size
    mean = float(pdf.mean()) if n else 0.0
    var = float((pdf ** 2).mean() - mean * mean) * (n // (n - 1)) if n > 1 else 0.0
    sigma = np.sqrt(abs(var))
    pmax = float(pdf.max()) if n else 0.0
    width = width_frac * np.pi * radius * (angular_sampling / 360.0)
    lines = []
    for p, v in zip(pdf, direction_vectors(rot, tilt)):
        if p <= 0:
            continue
        # RELION's (p - mean) / sigma is NaN for sigma = 0, which its min/max turn into +5 sigma
        col = min(max((p - mean) / sigma, -1.0), 5.0) if sigma > 0 else 5.0
        col = col / 6.0 + 1.0 / 6.0
        rp = radius + rmax_frac * radius * p / pmax
        if not (np.abs((radius - rp) * v) > 0.01).any():
            continue  # a cylinder of no length (Chimera complains)
        a, b = radius * v + offset, rp * v + offset
        lines.append(f".color {col:g} 0 {1.0 - col:g}")
        lines.append(".cylinder " + " ".join(f"{x:g}" for x in (*a, *b)) + f" {width:g}")
    return "".join(line + "\n" for line in lines)


def write_angdist_bild(path: Path, job: "AutoRefine", rows: np.ndarray) -> Path:
    """``<root>_class001_angdist.bild`` of the particles ``rows`` (RELION's ``MlModel::write``: radius
    and offset half the box in Å)."""
    smp = job.state.sampling
    rot, tilt, _ = sampling_directions(smp.healpix_order, smp.sym)
    half_box = job.box * job.pix / 2.0
    angular_sampling = angular_step(smp.healpix_order)   # getAngularSampling()
    text = angdist_bild(direction_counts(job, rows), rot, tilt, half_box, half_box, angular_sampling)
    _atomic_write_text(Path(path), text)
    return Path(path)
