"""The backends: counted transfers, the strict device's refusals, primitives equal across backends."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.backend import backend_from_env, backend_of, get_backend
from subtomo_nb.backend.base import BackendError

pytest.importorskip("array_api_strict")


@pytest.fixture
def strict():
    be = get_backend("strict")
    be.transfers.reset()
    yield be
    be.transfers.reset()


def test_strict_refuses_host_conversion_and_mixing(strict) -> None:
    a = strict.to_device(np.arange(4.0), "particles")
    with pytest.raises(RuntimeError, match="device1"):
        np.asarray(a)
    with pytest.raises(TypeError):
        a + np.ones(4)
    cpu = strict.xp.ones(4)   # the strict library's default device: a "host" array
    with pytest.raises(ValueError, match="different devices"):
        a + cpu


def test_transfers_counted_by_kind(strict) -> None:
    a = strict.to_device(np.zeros((3, 5), np.float32), "particles")
    strict.to_device(np.zeros(7), "reference")
    assert strict.to_device(a, "particles") is a          # already on the device: no copy
    host = strict.to_host(a * 2.0, "results")
    assert isinstance(host, np.ndarray) and host.shape == (3, 5)
    snap = strict.transfers.snapshot()
    assert snap["h2d"] == {"particles": (1, 60), "reference": (1, 56)}
    assert snap["d2h"] == {"results": (1, 60)}
    assert strict.transfers.copies("h2d", "particles") == 1


def test_upload_is_a_copy(strict) -> None:
    host = np.arange(3.0)
    dev = strict.to_device(host, "metadata")
    host[0] = 99.0
    assert strict.to_host(dev)[0] == 0.0


@pytest.mark.parametrize("name", ["numpy", "strict"])
def test_primitives_match_numpy(name: str) -> None:
    be = get_backend(name)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 6, 40)
    vals = rng.normal(size=(40, 3))
    target = be.to_device(np.zeros((6, 3)), "metadata")
    out = be.scatter_add(target, be.to_device(idx), be.to_device(vals))
    ref = np.zeros((6, 3))
    np.add.at(ref, idx, vals)
    np.testing.assert_allclose(be.to_host(out), ref, rtol=1e-12)
    w = rng.random(40)
    np.testing.assert_allclose(be.to_host(be.bincount(be.to_device(idx), be.to_device(w), 8)),
                               np.bincount(idx, weights=w, minlength=8), rtol=1e-12)
    a = rng.random((4, 10))
    part = be.to_host(be.argpartition(be.to_device(a), 2, axis=1))
    assert np.all(np.sort(np.take_along_axis(a, part[:, :3], axis=1), axis=1)
                  == np.sort(a, axis=1)[:, :3])
    f = be.fft()
    vol = rng.random((4, 4, 4))
    import scipy.fft

    # the same FFT library on every CPU backend: equal numbers, not just close ones
    np.testing.assert_array_equal(be.to_host(f.rfftn(be.to_device(vol), norm="forward")),
                                  scipy.fft.rfftn(vol, norm="forward"))


def test_strict_kernel_refuses_host_arrays(strict) -> None:
    with pytest.raises(TypeError, match="to_device"):
        strict.scatter_add(strict.to_device(np.zeros(3)), np.array([0]), np.array([1.0]))


def test_backend_of_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_of(np.ones(2), None, 3.0).name == "numpy"
    assert backend_of(get_backend("strict").to_device(np.ones(2))).name == "strict"
    monkeypatch.delenv("SUBTOMO_BACKEND", raising=False)
    assert backend_from_env().name == "numpy"
    monkeypatch.setenv("SUBTOMO_BACKEND", "strict")
    assert backend_from_env().describe() == "strict (array-api-strict, device1)"
    monkeypatch.setenv("SUBTOMO_BACKEND", "tpu")
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        backend_from_env()


def test_gpu_without_cupy_is_refused() -> None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="cupy"):
            backend_from_env(gpu="")
    else:  # pragma: no cover - GPU machines
        pytest.skip("cupy is installed here")
