"""DaskExecutor's transfers between the driver's device and the workers (strict backend, no cluster)."""

from __future__ import annotations

import types

import numpy as np
import pytest

pytest.importorskip("distributed")

from subtomo_nb.backend import get_backend  # noqa: E402
from subtomo_nb.fourier.backprojector import BackProjector  # noqa: E402
from subtomo_nb.parallel.executor import DaskExecutor  # noqa: E402


def test_shared_references_come_down_once_strict():
    be = get_backend("strict")
    rng = np.random.default_rng(0)
    a, b = (be.to_device(rng.standard_normal((8, 8, 8)), "reference") for _ in range(2))
    before = be.transfers.copies("d2h", "reference")
    out = DaskExecutor._host_references(types.SimpleNamespace(references=[a, a, b]), be)
    assert be.transfers.copies("d2h", "reference") - before == 2
    assert out[0] is out[1] and out[0] is not out[2]
    np.testing.assert_array_equal(out[2], be.to_host(b, "reference"))


def test_reduced_sums_go_up_without_a_zero_filled_backprojector_strict(monkeypatch):
    host = BackProjector(16, pad=2, r_max=6, dtype=np.float32)
    rng = np.random.default_rng(1)
    host.data = (rng.standard_normal(host.data.shape) + 1j * rng.standard_normal(host.data.shape)).astype(np.complex64)
    host.weight = rng.random(host.weight.shape).astype(np.float32)
    be = get_backend("strict")
    reference = BackProjector(16, pad=2, r_max=6, dtype=np.float32, backend=be)

    def refused(*args, **kwargs):
        raise AssertionError("a zero-filled BackProjector was made")

    monkeypatch.setattr(BackProjector, "__init__", refused)
    before = be.transfers.copies("h2d", "sums")
    dev = DaskExecutor._on_device(host, be)
    assert be.transfers.copies("h2d", "sums") - before == 2
    assert dev.backend is be and be.owns(dev.data) and be.owns(dev.weight)
    assert (dev.box, dev.padded, dev.pad, dev.r_max, dev.data_dim) == (host.box, host.padded, host.pad, host.r_max,
                                                                      host.data_dim)
    assert (dev.rdtype, dev.cdtype) == (reference.rdtype, reference.cdtype)
    assert (dev._scatter is None) is (reference._scatter is None)
    np.testing.assert_array_equal(be.to_host(dev.data, "sums"), host.data)
    np.testing.assert_array_equal(be.to_host(dev.weight, "sums"), host.weight)
    assert host.backend.name == "numpy" and isinstance(host.data, np.ndarray)      # the host one is untouched
    assert DaskExecutor._on_device(host, get_backend("numpy")) is host
