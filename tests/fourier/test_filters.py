"""Low-pass, B-factor and Fourier cropping/padding."""

from __future__ import annotations

import numpy as np
from _fourier_helpers import assert_same_on_device

from subtomo_nb.fourier.fft import rfft2, rfft3
from subtomo_nb.fourier.filters import (
    apply_b_factor,
    fourier_crop,
    fourier_crop_half,
    fourier_pad,
    low_pass,
    low_pass_weights,
)
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


def test_window_half_matches_index_reference() -> None:
    """The slice copy of common frequencies equals the explicit signed-index copy (odd/even boxes)."""
    from subtomo_nb.fourier.filters import _window_half

    rng = np.random.default_rng(2)
    for n_old, n_new, nd in [(16, 10, 3), (15, 10, 3), (16, 9, 3), (9, 16, 3), (12, 7, 2), (7, 12, 2), (8, 8, 2)]:
        F = rng.normal(size=(2,) + (n_old,) * (nd - 1) + (n_old // 2 + 1,))
        n = min(n_old, n_new)
        k = np.arange(-(n // 2), n - n // 2)
        src, dst, nx = k % n_old, k % n_new, n // 2 + 1
        ref = np.zeros((2,) + (n_new,) * (nd - 1) + (n_new // 2 + 1,))
        if nd == 3:
            ref[:, dst[:, None], dst[None, :], :nx] = F[:, src[:, None], src[None, :], :nx]
        else:
            ref[:, dst, :nx] = F[:, src, :nx]
        np.testing.assert_array_equal(_window_half(F, n_old, n_new, nd), ref)


# -- strict test device: the same numbers from device arrays, no host copies ----------------------


def test_filters_strict(be) -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(24, 24, 24))
    imgs = rng.normal(size=(3, 24, 24)).astype(np.float32)
    V, I = be.to_device(v, "test"), be.to_device(imgs, "test")
    d2h = dict(be.transfers.snapshot()["d2h"])

    def filtered(vol, images, backend: str) -> dict:
        return {
            "lp": low_pass(vol, 8.0, 2.0),
            "lp2": low_pass(images, 8.0, 2.0, edge_width_shells=3.0, ndim=2),
            "bf": apply_b_factor(vol, 60.0, 2.0),
            "crop": fourier_crop(vol, 15),
            "pad": fourier_pad(vol, 31),
            "crop_half": fourier_crop_half(rfft2(images), 24, 13, 2),
            "weights": low_pass_weights(24, 8.0, 2.0, backend=backend),
        }

    got = filtered(V, I, "strict")
    assert be.transfers.snapshot()["d2h"] == d2h
    ref = filtered(v, imgs, "numpy")
    for k, r in ref.items():
        assert_same_on_device(be, got[k], r)
