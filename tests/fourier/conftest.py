"""Fixtures of the Fourier tests: ``be``, the strict test device (skipped without array-api-strict)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def be():
    """The strict backend: arrays on ``array_api_strict.Device("device1")``, no host conversion."""
    pytest.importorskip("array_api_strict")
    from subtomo_nb.backend import get_backend

    return get_backend("strict")
