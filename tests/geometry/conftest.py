"""Shared fixtures for the geometry tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _shared_dir() -> Path:
    env = os.environ.get("SUBTOMO_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared"


@pytest.fixture(scope="session")
def relion_reference() -> Path:
    """``shared/data/relion-reference`` (RELION 5.0.1 outputs); skip when not available."""
    ref = _shared_dir() / "data" / "relion-reference"
    if not ref.is_dir():
        pytest.skip(f"RELION reference data not found at {ref} (set SUBTOMO_SHARED to the shared folder)")
    return ref
