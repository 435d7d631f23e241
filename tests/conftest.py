"""Shared fixtures: a tiny simulated RELION 5 project (session-scoped, a few seconds).

* ``tiny_project``: noise-free tiny project (:data:`subtomo_nb.simulate.TINY`: 1 tomogram of
  640 x 640 x 520 px at 2.7 Å, one virion with 92 hexamers, 9 tilts ±60°), the dict returned by
  :func:`subtomo_nb.simulate.simulate_project` (paths: ``project_dir``, ``tomograms``,
  ``particles``, ``optimisation_set``, ``mask``, ``map``, ``particles_true``, ``tilt_series``).
* ``tiny_project_noisy``: the same scene with noise at the default SNR.
* ``tiny_extract_3d`` / ``tiny_extract_2d``: the noise-free picks extracted at bin 4, box 32 as
  3D pseudo-subtomograms / 2D stacks (path of the written ``particles.star``).

Treat them as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from subtomo_nb.simulate import simulate_tiny_project


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Noise-free tiny simulated project (read-only)."""
    return simulate_tiny_project(tmp_path_factory.mktemp("tiny_project"), seed=0, snr=None)


@pytest.fixture(scope="session")
def tiny_project_noisy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny simulated project with noise at the default SNR (read-only)."""
    return simulate_tiny_project(tmp_path_factory.mktemp("tiny_project_noisy"), seed=0)


@pytest.fixture(scope="session")
def tiny_extract_3d(tiny_project: dict) -> Path:
    """``particles.star`` of the tiny noise-free picks extracted as 3D pseudo-subtomos (bin 4, box 32)."""
    from subtomo_nb.tasks.extract import extract_subtomos

    out = Path(tiny_project["project_dir"]) / "Extract" / "job_3d"
    return extract_subtomos(tiny_project["optimisation_set"], None, out, binning=4, box=32, stack2d=False)


@pytest.fixture(scope="session")
def tiny_extract_2d(tiny_project: dict) -> Path:
    """``particles.star`` of the tiny noise-free picks extracted as 2D stacks (bin 4, box 32)."""
    from subtomo_nb.tasks.extract import extract_subtomos

    out = Path(tiny_project["project_dir"]) / "Extract" / "job_2d"
    return extract_subtomos(tiny_project["optimisation_set"], None, out, binning=4, box=32, stack2d=True)
