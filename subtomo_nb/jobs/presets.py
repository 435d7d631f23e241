"""Named value sets of the job forms: registry name -> preset name -> values.

``"tutorial"``: the RELION 5 tomography tutorial's settings used in this project (HIV immature
capsid-like C6 lattice): initial model with 100 VDAM mini-batches, T = 4, one class, a 230 Å
mask, C6 and a 10° prior on the tilt angle; auto-refine with ``--ini_high 50 --sym C6
--particle_diameter 230`` and finer angular sampling faster. The notebook forms offer them
(:meth:`subtomo_nb.widgets.forms.JobForm.load_preset`) and the tutorial runs with them
(:func:`subtomo_nb.jobs.tutorial.run_tutorial`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

#: Named value sets per job type (registry name -> preset name -> values).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "initial_model": {
        "tutorial": {"nr_iter": 100, "tau_fudge": 4.0, "nr_classes": 1, "particle_diameter": 230.0,
                     "sym_name": "C6", "sigma_tilt": 10.0},
    },
    "refine3d": {
        "tutorial": {"ini_high": 50.0, "sym_name": "C6", "particle_diameter": 230.0, "auto_faster": True},
    },
}
