"""The E-step's compiled helpers equal the array expressions they replace, on any thread count."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.refine import _kernels
from subtomo_nb.refine.estep import ParticleTerms, phase_factors, translated_terms

pytestmark = pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba is not installed")


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_translated_terms_equal_complex_products(monkeypatch, parallel, dtype):
    monkeypatch.setattr(_kernels, "parallel_allowed", lambda: parallel)
    rng = np.random.default_rng(0)
    P, T, K = 5, 7, 300
    b = (rng.normal(size=(P, K)) + 1j * rng.normal(size=(P, K))).astype(dtype)
    rdt = b.real.dtype
    phases = phase_factors(rng.uniform(-8, 8, (K, 3)).astype(rdt), rng.uniform(-3, 3, (T, 3)).astype(rdt), 16)
    out = translated_terms(ParticleTerms(a=None, b=b, c=None), phases)
    prod = (b[:, None, :] * phases[None]).reshape(P * T, K)
    assert out.shape == (P * T, 2 * K) and out.dtype == rdt
    tol = 1e-6 if dtype == np.complex64 else 1e-14
    np.testing.assert_allclose(out[:, :K], prod.real, rtol=0, atol=tol * np.abs(prod).max())
    np.testing.assert_allclose(out[:, K:], prod.imag, rtol=0, atol=tol * np.abs(prod).max())
    # row p·T + t is particle p at translation t
    np.testing.assert_allclose(out[3 * T + 4, :K], (b[3] * phases[4]).real, rtol=0, atol=tol * np.abs(prod).max())


@pytest.mark.parametrize("parallel", [True, False])
def test_add_rows_equals_indexed_add(monkeypatch, parallel):
    monkeypatch.setattr(_kernels, "parallel_allowed", lambda: parallel)
    rng = np.random.default_rng(1)
    dst = (rng.normal(size=(50, 33)) + 1j * rng.normal(size=(50, 33))).astype(np.complex64)
    ids = rng.permutation(50)[:20]
    src = (rng.normal(size=(20, 33)) + 1j * rng.normal(size=(20, 33))).astype(np.complex64)
    expect = dst.copy()
    expect[ids] += src
    _kernels.add_rows(dst, ids, src)
    np.testing.assert_array_equal(dst, expect)
