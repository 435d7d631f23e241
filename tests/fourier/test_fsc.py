"""FSC, resolution and the full-set FSC relation."""

from __future__ import annotations

import numpy as np
from _fourier_helpers import assert_same_on_device

from subtomo_nb.fourier.fft import rfft3
from subtomo_nb.fourier.fsc import fsc, fsc_true_from_half, resolution
from subtomo_nb.fourier.grid import shell_index
from subtomo_nb.fourier.masks import soft_sphere


def test_identical_maps_give_one() -> None:
    v = np.random.default_rng(0).normal(size=(24, 24, 24))
    np.testing.assert_allclose(fsc(v, v), 1.0, rtol=1e-12)
    np.testing.assert_allclose(fsc(v, 3.0 * v), 1.0, rtol=1e-12)  # scale invariant
    np.testing.assert_allclose(fsc(v, -v)[1:], -1.0, rtol=1e-12)


def test_independent_noise_is_near_zero() -> None:
    rng = np.random.default_rng(1)
    n = 32
    a, b = rng.normal(size=(n, n, n)), rng.normal(size=(n, n, n))
    f = fsc(a, b)
    counts = np.bincount(shell_index(n).ravel(), minlength=n // 2 + 1)[: n // 2 + 1]
    assert np.all(np.abs(f[1:]) < 4 / np.sqrt(counts[1:]))


def test_half_transform_input_and_mask() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20, 20, 20))
    b = a + rng.normal(size=a.shape)
    np.testing.assert_allclose(fsc(a, b), fsc(rfft3(a), rfft3(b)), rtol=1e-12)
    m = soft_sphere(20, 6, 3)
    np.testing.assert_allclose(fsc(a, b, mask=m), fsc(a * m, b * m), rtol=1e-12)
    # 2D images as well
    np.testing.assert_allclose(fsc(a[0], a[0]), 1.0, rtol=1e-12)
    assert fsc(a[0], b[0]).shape == (11,)


def test_fsc_matches_definition_in_one_shell() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(16, 16, 16)), rng.normal(size=(16, 16, 16))
    Fa, Fb = rfft3(a), rfft3(b)
    s = shell_index(16) == 5
    ref = np.sum((np.conj(Fa[s]) * Fb[s]).real) / np.sqrt(np.sum(np.abs(Fa[s]) ** 2) * np.sum(np.abs(Fb[s]) ** 2))
    np.testing.assert_allclose(fsc(a, b)[5], ref, rtol=1e-12)


def test_resolution_of_hand_made_curve() -> None:
    curve = np.array([1, 0.99, 0.98, 0.95, 0.9, 0.8, 0.5, 0.3, 0.1, 0.05, 0.2, 0.0])
    # first shell below 0.143 is 8 -> last good shell 7 -> 64 * 1.5 / 7 Å
    assert np.isclose(resolution(curve, 64, 1.5), 64 * 1.5 / 7)
    s = 7 + (0.3 - 0.143) / (0.3 - 0.1)
    assert np.isclose(resolution(curve, 64, 1.5, interpolate=True), 64 * 1.5 / s)
    assert np.isclose(resolution(curve, 64, 1.5, threshold=0.5), 64 * 1.5 / 6)  # 0.5 is not below 0.5
    assert np.isclose(resolution(np.ones(17), 32, 2.0), 4.0)  # never crosses: Nyquist
    assert resolution(np.array([1.0, 0.1, 0.0]), 32, 2.0) == 999.0  # crosses at shell 1


def test_fsc_true_relation() -> None:
    f = np.array([1.0, 0.5, 0.143, 0.0, -0.2])
    out = fsc_true_from_half(f)
    np.testing.assert_allclose(out, [1.0, np.sqrt(2 / 3), np.sqrt(0.286 / 1.143), 0.0, 0.0])
    # inverse relation: FSC_true**2 (1 + FSC_half) = 2 FSC_half
    h = np.linspace(0.01, 0.99, 7)
    np.testing.assert_allclose(fsc_true_from_half(h) ** 2 * (1 + h), 2 * h)


# -- strict test device: the same numbers from device arrays, no host copies ----------------------


def test_fsc_strict(be) -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(20, 20, 20))
    b = a + rng.normal(size=a.shape)
    m = soft_sphere(20, 6, 3)
    A, B = be.to_device(a, "test"), be.to_device(b, "test")
    d2h = dict(be.transfers.snapshot()["d2h"])
    got = fsc(A, B)
    got_mask = fsc(A, B, mask=soft_sphere(20, 6, 3, backend=be))
    got_half = fsc(rfft3(A), rfft3(B))
    got_2d = fsc(A[0, ...], B[0, ...])
    assert be.transfers.snapshot()["d2h"] == d2h
    assert_same_on_device(be, got, fsc(a, b))
    assert_same_on_device(be, got_mask, fsc(a, b, mask=m))
    assert_same_on_device(be, got_half, fsc(rfft3(a), rfft3(b)))
    assert_same_on_device(be, got_2d, fsc(a[0], b[0]))


def test_resolution_and_fsc_true_of_device_curves(be) -> None:
    curve = np.array([1, 0.99, 0.98, 0.95, 0.9, 0.8, 0.5, 0.3, 0.1, 0.05, 0.2, 0.0])
    dev = be.to_device(curve, "test")
    n0 = be.transfers.copies("d2h", "results")
    assert resolution(dev, 64, 1.5, interpolate=True) == resolution(curve, 64, 1.5, interpolate=True)
    assert be.transfers.copies("d2h", "results") == n0 + 1  # the curve, brought to the host once
    assert resolution(list(curve), 64, 1.5) == resolution(curve, 64, 1.5)
    assert_same_on_device(be, fsc_true_from_half(dev), fsc_true_from_half(curve))
