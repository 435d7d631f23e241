"""A short auto-refine job of the tiny project, run through the job layer, and bit-for-bit comparison of two runs.

Shared by the tests that run the same refinement on different dask clusters (a hand-started
``dask scheduler`` + ``dask worker``, a LocalCluster, a SLURM cluster through dask-jobqueue).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star
from subtomo_nb.jobs import run_job

#: The worktree / checkout the tests import: dask workers started apart get it on PYTHONPATH.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Outputs compared bit for bit (maps) and column for column (particles).
MAPS = ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc")
POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                "rlnOriginZAngst", "rlnRandomSubset", "rlnLogLikeliContribution")


def worker_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with this checkout first on PYTHONPATH (for workers started in other processes)."""
    path = os.pathsep.join([str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return dict(os.environ, PYTHONPATH=path, **extra)


def refine_values(extract_star: str | os.PathLike, reference: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """The 3D auto-refine job values: the tiny project's truth as reference, 15° sampling, two
    iterations, the second the final one (``--auto_iter_max 2``)."""
    values = {"in_optimisation": str(Path(extract_star).parent / "optimisation_set.star"), "fn_ref": str(reference),
              "sym_name": "C6", "particle_diameter": 230.0, "ini_high": 50.0, "auto_faster": True,
              "sampling": "15 degrees", "offset_range": 4.0, "offset_step": 1.0,
              "other_args": "--auto_iter_max 2 --random_seed 1"}
    values.update(extra)
    return values


def run_refine_job(project_dir: str | os.PathLike, values: dict[str, Any], client: Any = None) -> Path:
    """Run the job in a new ``Refine3D/jobNNN`` of ``project_dir``; returns its directory."""
    return run_job("refine3d", values, project_dir, client=client)


def assert_same_refinement(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Two auto-refine job directories hold the same maps (to the bit) and the same particle table."""
    a, b = Path(a), Path(b)
    for name in MAPS:
        ma, pa = read_map(a / name)
        mb, pb = read_map(b / name)
        assert pa == pb, name
        np.testing.assert_array_equal(mb, ma, err_msg=name)
    ta = read_star(a / "run_data.star")["particles"]
    tb = read_star(b / "run_data.star")["particles"]
    assert list(ta["rlnTomoParticleName"]) == list(tb["rlnTomoParticleName"])
    for col in POSE_COLUMNS:
        if col in ta.columns:
            np.testing.assert_array_equal(tb[col].to_numpy(), ta[col].to_numpy(), err_msg=col)
