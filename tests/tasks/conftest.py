"""Fixtures of the task tests: the tiny simulated particles with their true poses."""

from __future__ import annotations

from pathlib import Path

import pytest

from subtomo_nb.tasks.tutorial import particles_with_truth


@pytest.fixture(scope="session")
def tiny_extracted_truth(tiny_project: dict, tiny_extract_3d: Path, tmp_path_factory) -> tuple[Path, dict]:
    """Noise-free tiny 3D pseudo-subtomograms with their true orientations and random half-sets."""
    out = Path(tiny_project["project_dir"]) / "Reconstruct" / "job_truth" / "particles_true.star"
    return particles_with_truth(tiny_extract_3d, tiny_project["particles_true"], out, seed=0), tiny_project
