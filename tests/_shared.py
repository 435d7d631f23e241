"""Locate ``shared/`` (RELION reference outputs) beside the repository, or skip with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_dir() -> Path | None:
    """``$SUBTOMO_SHARED`` or ``<repo>/../shared``; None where neither exists."""
    env = os.environ.get("SUBTOMO_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared")
    for c in candidates:
        if (c / "data" / "relion-reference").is_dir():
            return c
    return None


def relion_reference() -> Path:
    """The RELION reference-output folder, or skip the test with a clear reason."""
    s = shared_dir()
    if s is None:
        pytest.skip("RELION reference outputs not found: set SUBTOMO_SHARED or place shared/ beside the repo")
    return s / "data" / "relion-reference"
