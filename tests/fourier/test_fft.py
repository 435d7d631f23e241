"""RELION-normalised transforms and Fourier shifts."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.fourier.fft import irfft2, irfft3, rfft2, rfft3, shift_half


@pytest.mark.parametrize("n", [16, 17])
def test_rfft3_round_trip_and_normalisation(n: int) -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(2, n, n, n))
    F = rfft3(v)
    assert F.shape == (2, n, n, n // 2 + 1)
    np.testing.assert_allclose(irfft3(F, n), v, atol=1e-12)
    # DC = mean (forward divided by the voxel count), and the centre voxel is the origin
    np.testing.assert_allclose(F[:, 0, 0, 0].real, v.mean(axis=(1, 2, 3)), rtol=1e-12)
    delta = np.zeros((n, n, n))
    delta[n // 2, n // 2, n // 2] = 1.0
    np.testing.assert_allclose(rfft3(delta), np.full((n, n, n // 2 + 1), 1.0 / n ** 3), atol=1e-15)


def test_rfft2_round_trip() -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(size=(3, 20, 20))
    F = rfft2(img)
    np.testing.assert_allclose(irfft2(F, 20), img, atol=1e-12)
    np.testing.assert_allclose(F[:, 0, 0].real, img.mean(axis=(1, 2)), rtol=1e-12)


def _gauss3(n: int, centre: np.ndarray, sigma: float = 1.8) -> np.ndarray:
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * sigma ** 2))


def _com3(v: np.ndarray) -> np.ndarray:
    n = v.shape[-1]
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.array([(v * x).sum(), (v * y).sum(), (v * z).sum()]) / v.sum()


def test_shift_half_moves_content_by_plus_t_3d() -> None:
    # box large enough that the tails are negligible, blob wide enough to be band-limited
    n = 40
    c0 = np.array([0.4, -1.1, 0.7])
    v = _gauss3(n, c0)
    t = np.array([1.3, -0.7, 2.2])
    moved = irfft3(shift_half(rfft3(v), t), n)
    np.testing.assert_allclose(_com3(moved) - _com3(v), t, atol=1e-6)
    # equals the analytic Gaussian at c0 + t
    np.testing.assert_allclose(moved, _gauss3(n, c0 + t), atol=1e-6)


def test_shift_half_batched_2d() -> None:
    n = 40
    c = np.arange(n) - n // 2
    Y, X = np.meshgrid(c, c, indexing="ij")
    img = np.exp(-(X ** 2 + Y ** 2) / (2 * 1.8 ** 2))
    shifts = np.array([[0.5, 0.0], [-2.25, 1.75], [3.0, -3.0]])
    out = irfft2(shift_half(rfft2(img)[None], shifts), n)
    assert out.shape == (3, n, n)
    for o, t in zip(out, shifts):
        com = np.array([(o * X).sum(), (o * Y).sum()]) / o.sum()
        np.testing.assert_allclose(com, t, atol=1e-6)


def test_transforms_and_shifts_strict() -> None:
    """rfft/irfft (2D, 3D) and shift_half on strict arrays equal the numpy run exactly."""
    pytest.importorskip("array_api_strict")
    from subtomo_nb.backend import get_backend

    be = get_backend("strict")
    rng = np.random.default_rng(8)
    for dt in (np.float32, np.float64):
        v = rng.standard_normal((2, 10, 10, 10)).astype(dt)
        F = rfft3(v)
        Fs = rfft3(be.to_device(v))
        assert be.owns(Fs)
        np.testing.assert_array_equal(be.to_host(Fs), F)
        np.testing.assert_array_equal(be.to_host(irfft3(Fs, 10)), irfft3(F, 10))
        img = v[0, :3]
        np.testing.assert_array_equal(be.to_host(rfft2(be.to_device(img))), rfft2(img))
        np.testing.assert_array_equal(be.to_host(irfft2(rfft2(be.to_device(img)), (10, 10))), irfft2(rfft2(img), 10))
        t3 = rng.uniform(-3, 3, (2, 3))
        np.testing.assert_array_equal(be.to_host(shift_half(Fs, be.to_device(t3))), shift_half(F, t3))
        t2 = rng.uniform(-3, 3, (3, 2))
        G = rfft2(img)
        np.testing.assert_array_equal(be.to_host(shift_half(be.to_device(G), be.to_device(t2))), shift_half(G, t2))
    with pytest.raises(TypeError, match="to_device"):
        shift_half(Fs, t3)
