"""Tests of RELION's CTF and exposure filter (subtomo_nb.fourier.ctf)."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.fourier.ctf import (
    critical_exposure,
    ctf_2d,
    ctf_gamma_2d,
    dose_weight_2d,
    electron_wavelength,
)

PARAMS = dict(voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)


def test_wavelength_300kV():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, abs=1e-6)
    assert electron_wavelength(200.0) == pytest.approx(0.025079, abs=5e-6)


def test_ctf_at_origin_is_amplitude_contrast():
    c = ctf_2d(16, 2.0, defocus_u_A=20000.0, defocus_v_A=20000.0, defocus_angle_deg=0.0, **PARAMS)
    assert c.shape == (16, 9)
    assert c.dtype == np.float32
    assert c[0, 0] == pytest.approx(0.1, abs=1e-6)  # -sin(-atan(Q0/sqrt(1-Q0^2))) = Q0


def test_first_zero_position():
    """First zero where pi*lam*df*k^2 - pi/2*Cs*lam^3*k^4 + K3 = pi, solved by hand."""
    lam = electron_wavelength(300.0)
    df, cs = 30000.0, 2.7e7
    k3 = np.arctan(0.1 / np.sqrt(1 - 0.01))
    # quadratic in u = k^2: (pi/2) cs lam^3 u^2 - pi lam df u + (pi - k3) = 0, smaller root
    a, b, c = 0.5 * np.pi * cs * lam**3, -np.pi * lam * df, np.pi - k3
    u = (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)
    k0 = np.sqrt(u)  # 1/A
    n, pix = 512, 1.0
    ctf = ctf_2d(n, pix, defocus_u_A=df, defocus_v_A=df, defocus_angle_deg=0.0, dtype=np.float64, **PARAMS)
    row = ctf[0]  # along kx
    k = np.arange(row.size) / (n * pix)
    i = int(np.argmax(row < 0))  # first sign change
    assert k[i - 1] <= k0 <= k[i]
    # a hand value: 1/k0 is about 19.5 A at 3 um defocus, 300 kV
    assert 1 / k0 == pytest.approx(1 / np.sqrt(1 / (lam * df)) * np.sqrt(1 - k3 / np.pi) ** -1, rel=2e-2)


def test_astigmatism_rotates_with_angle():
    n, pix = 64, 2.0
    du, dv = 25000.0, 15000.0
    g0 = ctf_gamma_2d(n, pix, defocus_u_A=du, defocus_v_A=dv, defocus_angle_deg=0.0, half=False, **PARAMS)
    g90 = ctf_gamma_2d(n, pix, defocus_u_A=du, defocus_v_A=dv, defocus_angle_deg=90.0, half=False, **PARAMS)
    # along kx, angle 0 sees defocus U; angle 90 sees V there and U along ky
    gu = ctf_gamma_2d(n, pix, defocus_u_A=du, defocus_v_A=du, defocus_angle_deg=0.0, half=False, **PARAMS)
    gv = ctf_gamma_2d(n, pix, defocus_u_A=dv, defocus_v_A=dv, defocus_angle_deg=0.0, half=False, **PARAMS)
    np.testing.assert_allclose(g0[0, :], gu[0, :])
    np.testing.assert_allclose(g0[:, 0], gv[:, 0])
    np.testing.assert_allclose(g90[0, :], gv[0, :])
    np.testing.assert_allclose(g90[:, 0], gu[:, 0])
    # angle 90 equals the transpose of angle 0 (swap of kx, ky)
    np.testing.assert_allclose(g90, g0.T, atol=1e-9)
    # 45 degrees: the diagonal kx=ky sees U
    g45 = ctf_gamma_2d(n, pix, defocus_u_A=du, defocus_v_A=dv, defocus_angle_deg=45.0, half=False, **PARAMS)
    d = np.arange(1, 10)
    np.testing.assert_allclose(g45[d, d], gu[d, d])


def test_half_grid_matches_full_grid_and_batch():
    dus = np.array([20000.0, 30000.0, 40000.0])
    half = ctf_2d((12, 10), 3.0, defocus_u_A=dus, defocus_v_A=dus - 1000, defocus_angle_deg=30.0, **PARAMS)
    full = ctf_2d((12, 10), 3.0, defocus_u_A=dus, defocus_v_A=dus - 1000, defocus_angle_deg=30.0, half=False,
                  **PARAMS)
    assert half.shape == (3, 12, 6) and full.shape == (3, 12, 10)
    np.testing.assert_allclose(half[..., :5], full[..., :5])  # Nyquist column: +0.5 vs -0.5
    single = ctf_2d((12, 10), 3.0, defocus_u_A=30000.0, defocus_v_A=29000.0, defocus_angle_deg=30.0, **PARAMS)
    np.testing.assert_allclose(half[1], single)


def test_intact_first_peak_bfactor_scale():
    kw = dict(defocus_u_A=20000.0, defocus_v_A=20000.0, defocus_angle_deg=0.0, dtype=np.float64, **PARAMS)
    g = ctf_gamma_2d(64, 2.0, defocus_u_A=20000.0, defocus_v_A=20000.0, defocus_angle_deg=0.0, **PARAMS)
    c = ctf_2d(64, 2.0, intact_first_peak=True, **kw)
    assert np.all(c[np.abs(g) < np.pi / 2] == 1.0)
    np.testing.assert_allclose(c[np.abs(g) >= np.pi / 2], -np.sin(g[np.abs(g) >= np.pi / 2]))
    cb = ctf_2d(64, 2.0, bfactor=100.0, scale=0.5, **kw)
    c0 = ctf_2d(64, 2.0, **kw)
    k2 = (np.fft.fftfreq(64)[:, None] ** 2 + np.fft.rfftfreq(64)[None] ** 2) / 4.0
    np.testing.assert_allclose(cb, 0.5 * c0 * np.exp(-25.0 * k2))


def test_dose_weight():
    n, pix = 32, 2.0
    doses = np.array([0.0, 3.0, 60.0])
    w = dose_weight_2d(n, pix, doses, dtype=np.float64)
    assert w.shape == (3, 32, 17)
    np.testing.assert_allclose(w[0], 1.0)
    assert np.all(w[:, 0, 0] == 1.0)
    k = 5 / (n * pix)
    expected = np.exp(-0.5 * 60.0 / (0.245 * k ** -1.665 + 2.81))
    assert w[2, 0, 5] == pytest.approx(expected)
    assert w[2, 5, 0] == pytest.approx(expected)
    assert critical_exposure(0.1) == pytest.approx(0.245 * 0.1 ** -1.665 + 2.81)
    wb = dose_weight_2d(n, pix, 10.0, bfactor_per_dose=4.0, dtype=np.float64)
    assert wb[0, 5] == pytest.approx(np.exp(-0.25 * 40.0 * k * k))
