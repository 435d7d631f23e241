"""The synthetic tutorial's pieces that need no job: the true poses, pose errors and the summary.

* :func:`particles_with_truth`: extracted particles with their true orientations and half-sets;
* :func:`pose_errors`: refined poses against the truth (angle modulo the symmetry, translation);
* :func:`summary_lines`: the closing summary of :func:`subtomo_nb.jobs.tutorial.run_tutorial`
  (which runs the tutorial's jobs) as text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from subtomo_nb.io.errors import InputError
from subtomo_nb.io.star import read_star, write_star
from subtomo_nb.refine.report import at_nyquist, next_step

__all__ = ["TRUTH_COLUMNS", "particles_with_truth", "pose_errors", "summary_lines"]

#: Columns carried over from the ground truth onto the extracted particles.
TRUTH_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                 "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")


def particles_with_truth(extracted_star: str | os.PathLike, truth_star: str | os.PathLike,
                         out_star: str | os.PathLike, seed: int = 0) -> Path:
    """Write the extracted particles with their true orientations/origins and random half-sets.

    Particles are matched on ``rlnTomoParticleName``. The truth's origins are relative to the
    picked positions; extraction (``apply_offsets``) centres the boxes on the picks and resets the
    origins to 0, so the true origins apply unchanged. ``rlnRandomSubset`` is drawn with ``seed``.

    Returns
    -------
    The written STAR file.
    """
    blocks = read_star(extracted_star)
    parts = blocks["particles"]
    truth = read_star(truth_star)["particles"].set_index("rlnTomoParticleName")
    names = parts["rlnTomoParticleName"].astype(str)
    missing = ~names.isin(truth.index)
    if missing.any():
        raise InputError(what=f"particle {names[missing].iloc[0]} has no ground truth", path=str(extracted_star),
                         row=int(np.flatnonzero(missing.to_numpy())[0]) + 1, field="rlnTomoParticleName")
    out = parts.copy()
    for label in TRUTH_COLUMNS:
        out[label] = truth.loc[names, label].to_numpy(dtype=np.float64)
    rng = np.random.default_rng(seed)
    out["rlnRandomSubset"] = rng.permutation(np.arange(len(out)) % 2 + 1)
    new_blocks = dict(blocks)
    new_blocks["particles"] = out
    out_star = Path(out_star)
    out_star.parent.mkdir(parents=True, exist_ok=True)
    write_star(out_star, new_blocks)
    return out_star


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The tutorial's closing summary, as text: what was reached against what was possible.

    Paths are project-relative, resolutions in Å, and every number that is far from its
    reference (the reconstruction with the true poses, the starting low-pass) says so.
    """
    nyq = result["nyquist_A"]
    lines = [f"project {result['project']}/: {result['particles']} particles, pixel {result['pixel_size_A']:.2f} Å "
             f"(Nyquist {nyq:.2f} Å)",
             f"with the true orientations ({result['true_poses_map']}): {result['true_poses_resolution_A']:.2f} Å "
             f"gold-standard (FSC 0.143); {result['true_poses_resolution_vs_truth_A']:.2f} Å against the ground truth "
             f"(FSC 0.5)"]
    if "refined_map" in result:
        res, ref_res = result["refined_resolution_A"], result["true_poses_resolution_A"]
        ang, acc = result["median_angular_error_deg"], result["accuracy_rot_deg"]
        if "initial_model" in result:
            lines.append(f"initial model (VDAM): {result['initial_model']}")
        lines.append(f"auto-refine ({result['refined_map']}): {res:.2f} Å gold-standard after "
                     f"{result['iterations']} iterations"
                     + (" (at Nyquist)" if at_nyquist(res, result["pixel_size_A"]) else ""))
        frame = (" (the model's frame superposed onto the truth's; centre offset removed)"
                 if "initial_model" in result else "")
        lines.append(f"refined poses against the truth{frame}: median angular error {ang:.2f}° (modulo C6), median "
                     f"translation error {result['median_translation_error_px']:.2f} px; RELION's accuracy "
                     f"estimate {acc:.2f}°")
        ok = True
        if res > 1.1 * ref_res:
            ok = False
            lines.append(f"WARNING: the refined map ({res:.2f} Å) is more than 10 % worse than the reconstruction "
                         f"with the true orientations ({ref_res:.2f} Å)")
        if res >= result["ini_high_A"]:
            ok = False
            lines.append(f"WARNING: the refined map ({res:.2f} Å) is no better than the reference's starting "
                         f"low-pass ({result['ini_high_A']:g} Å)")
        limit = 2.0 * max(acc, result["fine_step_deg"])
        if result.get("refined_hand") == "mirrored":
            ok = False
            lines.append("WARNING: the refined map has the other hand than the truth (its mirror image fits it "
                         "better), so its poses cannot be compared with the true ones")
        elif ang > limit:
            ok = False
            lines.append(f"WARNING: the refined orientations are far from the truth: median error {ang:.2f}° is more "
                         f"than twice the angular accuracy or sampling ({limit / 2:.2f}°)")
        if ok:
            lines.append("success: the refinement reached the resolution of the true orientations (within 10 %), "
                         "with a median angular error within twice RELION's accuracy estimate (or the sampling); "
                         "the best poses against the ground truth are measured by benchmarks/angular_error_oracle.py")
    seconds = result["seconds"]
    lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    if "refined_map" in result:
        lines.append(next_step(result["refined_resolution_A"], result["pixel_size_A"], result["binning"],
                               result["box"], str(Path(result["refined_map"]).parent)))
    return lines


def pose_errors(data_star: str | os.PathLike, truth_star: str | os.PathLike, sym: str,
                pixel_size_A: float, frame: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle angular error (degrees, modulo ``sym``) and translation error (pixels).

    Particles are matched on ``rlnTomoParticleName``; both files' origins are relative to the
    same picked positions.

    ``frame``: for poses refined against a map in a frame of its own (a de novo initial model),
    the rotation that superposes that map onto the truth (:attr:`Superposition.matrix
    <subtomo_nb.initial_model.compare.Superposition>`). The refined rotations are then taken to
    the truth's frame (``A M^T``), and the origins are compared after removing the model's own
    centre offset: one vector in the reference frame, the least-squares fit over all particles of
    ``origin - true origin = A_true c``.
    """
    from subtomo_nb.geometry.euler import angular_distance, euler_to_matrix
    from subtomo_nb.geometry.symmetry import point_group

    d = read_star(data_star)["particles"]
    t = read_star(truth_star)["particles"].set_index("rlnTomoParticleName").loc[d["rlnTomoParticleName"].astype(str)]
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    A = euler_to_matrix(*d[angles].to_numpy(np.float64).T)
    At = euler_to_matrix(*t[angles].to_numpy(np.float64).T)
    if frame is not None:
        A = A @ np.asarray(frame, np.float64).T
    ang = np.min([angular_distance(A, At @ S.T) for S in point_group(sym)], axis=0)
    cols = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
    diff = (d[cols].to_numpy(np.float64) - t[cols].to_numpy(np.float64)) / pixel_size_A
    if frame is not None:
        c, *_ = np.linalg.lstsq(At.reshape(-1, 3), diff.reshape(-1), rcond=None)
        diff = diff - At @ c
    trans = np.linalg.norm(diff, axis=1)
    return ang, trans
