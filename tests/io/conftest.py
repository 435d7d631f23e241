"""Fixtures for the io tests: the RELION reference outputs and small synthetic projects."""

from __future__ import annotations

from pathlib import Path

import pytest

from io_testutils import REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """RELION 5.0.1 reference outputs (skipped when the shared folder is absent)."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"RELION reference data not found at {REFERENCE_DIR} (set SUBTOMO_SHARED to the shared folder)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def pseudo_dir(reference_dir: Path) -> Path:
    """The 60 RELION-4 style pseudo-subtomograms (32^3, 6 A/px)."""
    d = reference_dir / "pseudo_subtomos_c4"
    if not (d / "particles.star").is_file():
        pytest.skip(f"{d} lacks particles.star")
    return d
