"""The hand-written primitives of :class:`subtomo_nb.backend.base.CupyBackend` against numpy (GPU only).

scatter-add (float32, complex64 and int64 targets; repeated indices; one axis and a tuple of
axes), bincount, argpartition, set_rows, and the transfer counter of ``to_device``/``to_host``.
Marked ``gpu``; skipped without cupy or a device, failed instead with ``SUBTOMO_REQUIRE_GPU=1``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.gpu._require import require_cupy_device

cupy = require_cupy_device()

from subtomo_nb.backend import get_backend  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def be():
    return get_backend("cupy")


def _values(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if np.dtype(dtype).kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-50, 50, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.int64])
def test_scatter_add_rows_with_repeats(be, dtype):
    rng = np.random.default_rng(0)
    target = _values(rng, (7, 5), dtype)
    index = np.array([0, 3, 3, 6, 0, 0, 2, 3], dtype=np.int64)          # repeated rows are summed
    values = _values(rng, (len(index), 5), dtype)
    expect = target.copy()
    np.add.at(expect, index, values)
    dev = be.to_device(target)
    out = be.scatter_add(dev, be.to_device(index), be.to_device(values))
    assert out is dev                                                   # in place, returned
    got = be.to_host(dev)
    assert got.dtype == np.dtype(dtype)
    if np.dtype(dtype).kind == "i":
        np.testing.assert_array_equal(got, expect)                      # exact (float64 sums < 2**53)
    else:
        np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.int64])
def test_scatter_add_tuple_index_flat_target(be, dtype):
    rng = np.random.default_rng(1)
    target = _values(rng, (4, 6), dtype)
    rows = np.array([1, 1, 3, 0, 1], dtype=np.int64)
    cols = np.array([2, 2, 5, 0, 2], dtype=np.int64)                   # (1, 2) three times
    values = _values(rng, (len(rows),), dtype)
    expect = target.copy()
    np.add.at(expect, (rows, cols), values)
    dev = be.to_device(target)
    be.scatter_add(dev, (be.to_device(rows), be.to_device(cols)), be.to_device(values))
    np.testing.assert_allclose(be.to_host(dev), expect, rtol=1e-6, atol=1e-6)


def test_bincount_weights_and_minlength(be):
    rng = np.random.default_rng(2)
    index = rng.integers(0, 9, size=200).astype(np.int64)
    weights = rng.standard_normal(200)
    for minlength in (12, 9, 5):      # longer than, equal to and shorter than the largest index + 1
        expect = np.bincount(index, weights=weights, minlength=minlength)[:minlength]
        got = be.to_host(be.bincount(be.to_device(index), be.to_device(weights), minlength))
        assert got.shape == (minlength,)
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axis", [-1, 0])
def test_argpartition_partitions_as_numpy(be, axis):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 40)).astype(np.float32)
    kth = 5
    idx = be.to_host(be.argpartition(be.to_device(a), kth, axis=axis))
    part = np.take_along_axis(a, idx, axis=axis)
    ref = np.take_along_axis(a, np.argpartition(a, kth, axis=axis), axis=axis)
    lo = np.take(part, np.arange(kth), axis=axis)
    hi = np.take(part, np.arange(kth + 1, a.shape[axis]), axis=axis)
    pivot = np.take(part, [kth], axis=axis)
    np.testing.assert_array_equal(pivot, np.take(ref, [kth], axis=axis))   # the kth value itself
    assert np.all(lo <= pivot) and np.all(hi >= pivot)
    np.testing.assert_array_equal(np.sort(idx, axis=axis), np.sort(np.argsort(a, axis=axis), axis=axis))


def test_set_rows(be):
    rng = np.random.default_rng(4)
    target = rng.standard_normal((8, 3)).astype(np.float32)
    index = np.array([6, 1, 4], dtype=np.int64)
    values = rng.standard_normal((3, 3)).astype(np.float32)
    expect = target.copy()
    expect[index] = values
    dev = be.to_device(target)
    assert be.set_rows(dev, be.to_device(index), be.to_device(values)) is dev
    np.testing.assert_array_equal(be.to_host(dev), expect)


def test_transfers_are_counted_by_kind(be):
    be.transfers.reset()
    host = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    dev = be.to_device(host, "particles")
    assert isinstance(dev, cupy.ndarray)
    assert be.to_device(dev, "particles") is dev                       # a device array passes through
    be.to_device(host[0], "reference")
    back = be.to_host(dev, "results")
    np.testing.assert_array_equal(back, host)
    assert be.to_host(back, "results") is back                          # a host array passes through, uncounted
    snap = be.transfers.snapshot()
    assert snap["h2d"] == {"particles": (1, host.nbytes), "reference": (1, host[0].nbytes)}
    assert snap["d2h"] == {"results": (1, host.nbytes)}
    be.transfers.reset()
