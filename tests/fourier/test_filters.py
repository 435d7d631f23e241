"""Low-pass, B-factor and Fourier cropping/padding."""

from __future__ import annotations

import numpy as np

from subtomo_nb.fourier.fft import rfft2, rfft3
from subtomo_nb.fourier.filters import apply_b_factor, fourier_crop, fourier_pad, low_pass
from subtomo_nb.fourier.grid import radius_grid


def test_low_pass_transmission() -> None:
    n, pix, res = 32, 2.0, 8.0  # cut-off shell 32 * 2 / 8 = 8
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, n, n))
    t = np.abs(rfft3(low_pass(v, res, pix))) / np.abs(rfft3(v))
    r = radius_grid(n, 3)
    np.testing.assert_allclose(t[r < 7.0], 1.0, atol=1e-10)
    np.testing.assert_allclose(t[r > 9.0], 0.0, atol=1e-10)
    edge = (r > 7.0) & (r < 9.0)
    np.testing.assert_allclose(t[edge], 0.5 - 0.5 * np.cos(np.pi * (9.0 - r[edge]) / 2.0), atol=1e-10)
    np.testing.assert_allclose(t[r == 8.0], 0.5, atol=1e-10)
    # 2D images and batches
    img = rng.normal(size=(4, n, n))
    t2 = np.abs(rfft2(low_pass(img, res, pix, ndim=2))) / np.abs(rfft2(img))
    assert np.allclose(t2[:, radius_grid(n, 2) < 7], 1.0) and np.allclose(t2[:, radius_grid(n, 2) > 9], 0.0)


def test_b_factor() -> None:
    n, pix, B = 24, 1.5, 100.0
    v = np.random.default_rng(1).normal(size=(n, n, n))
    t = np.abs(rfft3(apply_b_factor(v, B, pix))) / np.abs(rfft3(v))
    s = radius_grid(n, 3) / (n * pix)
    ok = s <= 1 / (2 * pix)
    np.testing.assert_allclose(t[ok], np.exp(-B * s[ok] ** 2 / 4), rtol=1e-10)
    np.testing.assert_allclose(t[~ok], 0.0, atol=1e-12)


def _gauss(n: int, centre: np.ndarray, sigma: float) -> np.ndarray:
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * sigma ** 2))


def test_fourier_crop_bins_and_keeps_mean() -> None:
    centre = np.array([2.0, -4.0, 6.0])
    v = _gauss(32, centre, 2.4)
    small = fourier_crop(v, 16)
    assert small.shape == (16, 16, 16)
    np.testing.assert_allclose(small.mean(), v.mean(), rtol=1e-12)
    # pixel size doubles: the blob is at half the coordinates with half the width
    np.testing.assert_allclose(small, _gauss(16, centre / 2, 1.2), atol=2e-3)
    # padding back keeps the mean; crop(pad(x)) is the identity up to the small box's Nyquist
    # plane (copied to one side only, as RELION's windowFourierTransform), tiny for this blob
    big = fourier_pad(small, 32)
    np.testing.assert_allclose(big.mean(), v.mean(), rtol=1e-12)
    np.testing.assert_allclose(fourier_crop(big, 16), small, atol=1e-4)
    np.testing.assert_allclose(big, v, atol=2e-3)
    img = v[16]
    np.testing.assert_allclose(fourier_crop(img, 16).mean(), img.mean(), rtol=1e-12)
