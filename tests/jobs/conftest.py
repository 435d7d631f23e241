"""Fixtures of the job tests: GPUs faked on a machine without cupy."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import pytest


class FakeCupyBackend:
    """What the job layer asks of the cupy backend (its name and its run.out description)."""

    name = "cupy"

    def describe(self, n: int = 1) -> str:
        return f"cupy ({n} GPU{'s' if n != 1 else ''})"


class FakeCupyModule(types.ModuleType):
    """A ``cupy`` module with ``n`` devices: ``cupy.cuda.Device(i).use()`` records ``i`` in ``used``."""

    def __init__(self, n: int) -> None:
        super().__init__("cupy")
        self.used: list[int] = []
        self.current = 0
        module = self

        class Device:
            def __init__(self, i: int | None = None) -> None:
                self.id = module.current if i is None else int(i)

            def use(self) -> None:
                module.used.append(self.id)
                module.current = self.id

            def __eq__(self, other: object) -> bool:
                return isinstance(other, Device) and other.id == self.id

        runtime = types.SimpleNamespace(getDeviceCount=lambda: n)
        self.cuda = types.SimpleNamespace(Device=Device, runtime=runtime)


@pytest.fixture
def fake_gpus(monkeypatch) -> Callable[[int], FakeCupyModule]:
    """``fake_gpus(n)``: the cupy backend and ``n`` visible GPUs faked; returns the fake ``cupy`` module."""
    import subtomo_nb.backend as backend

    def make(n: int) -> FakeCupyModule:
        module = FakeCupyModule(n)
        monkeypatch.setattr(backend, "backend_from_env", lambda gpu=None: FakeCupyBackend())
        monkeypatch.setitem(sys.modules, "cupy", module)
        return module

    return make
