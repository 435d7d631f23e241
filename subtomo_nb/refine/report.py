"""What a finished 3D auto-refine tells its user: why it stopped, the resolution, the next step.

Pure text from the numbers :class:`~subtomo_nb.refine.autorefine.AutoRefine` reports in its
``"finished"`` event; the job layer writes the lines to ``run.out`` and the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["stop_report", "at_nyquist", "next_step"]

#: RELION's MAX_NR_ITER_WO_RESOL_GAIN and MAX_NR_ITER_WO_LARGE_HIDDEN_VARIABLE_CHANGES (ml_optimiser.h).
ITERATIONS_NEEDED = 1


def at_nyquist(resolution_A: float, pixel_size_A: float) -> bool:
    """Whether a gold-standard resolution is the Nyquist limit of the pixel.

    Parameters
    ----------
    resolution_A
        Resolution in Å where the FSC falls below 0.143 (the last shell when it never does).
    pixel_size_A
        Pixel size in Å.

    Returns
    -------
    bool
        True when the FSC stays at or above 0.143 in every shell up to Nyquist (2 pixels): the
        pixel size, not the data, limits the map.
    """
    return resolution_A <= 2.0 * pixel_size_A * 1.001


def next_step(resolution_A: float, pixel_size_A: float, binning: float, box: int, job_dir: str) -> str:
    """The step a RELION user takes after an auto-refine at this resolution.

    Parameters
    ----------
    resolution_A, pixel_size_A
        Final resolution and pixel size (Å).
    binning
        The particles' extraction binning relative to the tilt series (``rlnTomoSubtomogramBinning``).
    box
        The particles' box (pixels).
    job_dir
        The auto-refine's job directory, as the user names it (project-relative).

    Returns
    -------
    str
        One line: extract again at half the binning and twice the box when the pixel size limits
        the map; otherwise look at the map with its mask, re-centre and refine again.
    """
    if at_nyquist(resolution_A, pixel_size_A):
        if binning / 2 >= 1:
            return (f"next step: the pixel size limits the map, not the data: extract the particles again at bin "
                    f"{binning / 2:g} (subtomo extract --ios {job_dir}/run_optimisation_set.star --bin {binning / 2:g} "
                    f"--b {2 * box} --no_stack2d --o Extract/jobNNN; re-centre first with subtomo star-handler "
                    f"--center if the density is off the box centre) and refine from {job_dir}/run_class001.mrc")
        return ("next step: the map is at the Nyquist limit of unbinned data: sharpen and validate it "
                f"({job_dir}/run_class001.mrc and its half maps)")
    return (f"next step: look at {job_dir}/run_class001.mrc with its mask (subtomo_nb.viewer.align_mask), re-centre "
            "the particles if the density is off the box centre (subtomo star-handler --center), and refine again "
            "with a tighter mask or more particles")


def _times(n: int) -> str:
    return f"{n} iteration{'s' if n != 1 else ''}"


def stop_report(event: Mapping[str, Any]) -> list[str]:
    """The closing lines of an auto-refine, from its ``"finished"`` event.

    Parameters
    ----------
    event
        ``reason`` ("converged" or "iteration limit"), ``iteration``, ``auto_iter_max``,
        ``fine_step_deg`` and ``acc_rot_deg`` (degrees), ``nr_iter_wo_resol_gain``,
        ``nr_iter_wo_hidden_changes``, ``auto_ignore_angles``, ``change_orientations_deg``,
        ``change_offsets_A`` (Å), ``resolution_A``, ``pixel_size_A``, ``fsc_at_nyquist``,
        ``ini_high_A`` (the initial low-pass, Å; 0 for none), ``box`` (pixels), ``binning`` (the
        particles' extraction binning) and ``job_dir`` (the job directory as the user names it).

    Returns
    -------
    list of str
        Why it stopped (RELION's convergence criteria as numbers), the final resolution against
        Nyquist, a warning where the result is no better than its start, and a next step.
    """
    fine, acc = float(event["fine_step_deg"]), float(event["acc_rot_deg"])
    gain, hidden = int(event["nr_iter_wo_resol_gain"]), int(event["nr_iter_wo_hidden_changes"])
    finer = fine < 0.75 * acc
    sampling = f"angular sampling {fine:.2f}° {'is' if finer else 'is not'} finer than 0.75 × the angular accuracy " \
               f"{acc:.2f}° = {0.75 * acc:.2f}°"
    if not finer and event.get("has_fine_enough_sampling"):
        sampling += " (it was in an earlier iteration, which is what RELION requires)"
    criteria = (
        f"{sampling}; {_times(gain)} without resolution gain (RELION needs {ITERATIONS_NEEDED}); "
        + (f"changes of the poses ignored (--auto_ignore_angles; last change {event['change_orientations_deg']:.2f}°, "
           f"{event['change_offsets_A']:.2f} Å)" if event.get("auto_ignore_angles") else
           f"{_times(hidden)} without large changes of the poses (RELION needs {ITERATIONS_NEEDED}; last change "
           f"{event['change_orientations_deg']:.2f}°, {event['change_offsets_A']:.2f} Å)"))
    final_it = int(event["iteration"])
    if event["reason"] == "converged":
        lines = [f"stopped: converged after iteration {final_it - 1}, by RELION's criteria ({criteria}); "
                 f"iteration {final_it} was the final one, with all data to Nyquist"]
    else:
        lines = [f"stopped: the iteration limit (--auto_iter_max {int(event['auto_iter_max'])}) was reached before "
                 f"convergence ({criteria}); iteration {final_it} was the final one, with all data to Nyquist"]
    res, pix = float(event["resolution_A"]), float(event["pixel_size_A"])
    fsc_n = float(event.get("fsc_at_nyquist", float("nan")))
    lines.append(f"final resolution {res:.2f} Å (gold-standard FSC 0.143); Nyquist is {2 * pix:.2f} Å "
                 f"(pixel {pix:.2f} Å)" + (": the map is at Nyquist" if at_nyquist(res, pix) else "")
                 + (f"; FSC at Nyquist {fsc_n:.3f}" if math.isfinite(fsc_n) else ""))
    ini = float(event.get("ini_high_A") or 0.0)
    if ini > 0 and res >= ini:
        lines.append(f"WARNING: the final resolution {res:.2f} Å is no better than the reference's initial low-pass "
                     f"{ini:g} Å: the refinement did not find the particles' orientations (check the reference, its "
                     f"hand and pixel size, the mask diameter and the symmetry)")
    else:
        lines.append(next_step(res, pix, float(event.get("binning", 1.0)), int(event["box"]),
                               str(event.get("job_dir", "<job directory>"))))
    return lines
