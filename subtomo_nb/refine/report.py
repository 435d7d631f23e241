"""What a finished 3D auto-refine tells its user: why it stopped, the resolution, the next step.

Pure text from the numbers :class:`~subtomo_nb.refine.autorefine.AutoRefine` reports in its
``"finished"`` event; the job layer writes the lines to ``run.out`` and the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["stop_report", "at_nyquist"]

#: RELION's MAX_NR_ITER_WO_RESOL_GAIN and MAX_NR_ITER_WO_LARGE_HIDDEN_VARIABLE_CHANGES (ml_optimiser.h).
ITERATIONS_NEEDED = 1


def at_nyquist(resolution_A: float, pixel_size_A: float, fsc_at_nyquist: float = float("nan")) -> bool:
    """Whether a resolution is limited by the pixel size: at Nyquist (2 pixels), or FSC still ≥ 0.143 there."""
    return resolution_A <= 2.0 * pixel_size_A * 1.001 or (math.isfinite(fsc_at_nyquist) and fsc_at_nyquist >= 0.143)


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
        ``change_offsets_A`` (Å), ``resolution_A``, ``pixel_size_A``, ``fsc_at_nyquist`` and
        ``ini_high_A`` (the initial low-pass, Å; 0 for none).

    Returns
    -------
    list of str
        Why it stopped (RELION's convergence criteria as numbers), the final resolution against
        Nyquist, a warning where the result is no better than its start, and a next step.
    """
    fine, acc = float(event["fine_step_deg"]), float(event["acc_rot_deg"])
    gain, hidden = int(event["nr_iter_wo_resol_gain"]), int(event["nr_iter_wo_hidden_changes"])
    sampling_ok = fine < 0.75 * acc or bool(event.get("has_fine_enough_sampling"))
    criteria = (
        f"angular sampling {fine:.2f}° {'is' if sampling_ok else 'is not'} finer than 0.75 × the angular accuracy "
        f"{acc:.2f}° = {0.75 * acc:.2f}°; {_times(gain)} without resolution gain (RELION needs {ITERATIONS_NEEDED}); "
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
                 f"convergence ({criteria})"]
    res, pix = float(event["resolution_A"]), float(event["pixel_size_A"])
    fsc_n = float(event.get("fsc_at_nyquist", float("nan")))
    nyq = at_nyquist(res, pix, fsc_n)
    lines.append(f"final resolution {res:.2f} Å (gold-standard FSC 0.143); Nyquist is {2 * pix:.2f} Å "
                 f"(pixel {pix:.2f} Å)" + (f", FSC at Nyquist {fsc_n:.3f}" if math.isfinite(fsc_n) else ""))
    ini = float(event.get("ini_high_A") or 0.0)
    if ini > 0 and res >= ini:
        lines.append(f"WARNING: the final resolution {res:.2f} Å is no better than the reference's initial low-pass "
                     f"{ini:g} Å: the refinement did not find the particles' orientations (check the reference, its "
                     f"hand and pixel size, the mask diameter and the symmetry)")
    if nyq:
        lines.append("the resolution is limited by the pixel size, not by the data: next step, extract the "
                     "particles again at a smaller binning (subtomo extract --ios <this job>/run_optimisation_set.star "
                     "--bin 2 --b 64, after re-centring with subtomo star-handler --center if the density is off "
                     "the box centre) and refine from run_class001.mrc")
    elif not (ini > 0 and res >= ini):
        lines.append("next step: look at run_class001.mrc with its mask (subtomo_nb.viewer.align_mask), re-centre the "
                     "particles if the density is off the box centre (subtomo star-handler --center), and refine "
                     "again with a tighter mask or more particles")
    return lines
