"""What the GPU tests need: cupy and a CUDA device, or a skip -- or a failure where the GPU must be there.

``SUBTOMO_REQUIRE_GPU=1`` (set by ``benchmarks/gpu_check.sh`` on the GPU machine) turns every
"skipped: no cupy / no device / no dask-cuda" of ``tests/gpu`` into a failure, so a check on a GPU
machine cannot pass by skipping. Unset (CI, CPU machines), they skip with the reason.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

#: The environment variable that makes a missing GPU (cupy, device, dask-cuda) a failure.
REQUIRE_ENV = "SUBTOMO_REQUIRE_GPU"


def gpu_required() -> bool:
    """Whether ``SUBTOMO_REQUIRE_GPU`` asks for failures instead of skips."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def missing(reason: str, *, module_level: bool = True) -> None:
    """Skip (the default) or fail (``SUBTOMO_REQUIRE_GPU=1``) with ``reason``; never returns."""
    if gpu_required():
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_module(name: str) -> ModuleType:
    """``importlib.import_module(name)``, or :func:`missing` naming it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        why = f"{name} is not importable ({exc})"
    missing(why)
    raise AssertionError("unreachable: missing() raises")


def require_cupy_device() -> ModuleType:
    """cupy with at least one usable CUDA device, or :func:`missing`."""
    cupy = require_module("cupy")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, or a driver that is missing altogether
        missing(f"no usable CUDA device ({type(exc).__name__}: {exc})")
    if n < 1:
        missing("no CUDA device is visible")
    return cupy
