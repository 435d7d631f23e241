"""Fixtures of the GPU tests: the execution-layer tests' E-step inputs, reused (not copied)."""

from __future__ import annotations

from tests.parallel.conftest import estep_setup  # noqa: F401 - the fixture, for test_dask_cuda.py
