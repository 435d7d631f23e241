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


def _weights_pair(monkeypatch, d2, lpr, lpt, fraction, max_sig):
    """(compiled, array-expression) results of weights_from_diff2 on the same input."""
    from subtomo_nb.backend import get_backend
    from subtomo_nb.refine import estep

    fast = estep.weights_from_diff2(d2, lpr, lpt, adaptive_fraction=fraction, max_significant=max_sig)
    with monkeypatch.context() as m:   # the numpy backend without its compiled kernels
        m.setattr(get_backend("numpy"), "kernel", lambda name: None)
        ref = estep.weights_from_diff2(d2, lpr, lpt, adaptive_fraction=fraction, max_significant=max_sig)
    return fast, ref


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("max_sig", [None, 1, 7, 100])
@pytest.mark.parametrize("prior_dims", [(1, 1), (2, 2), (0, 1)])
def test_compiled_posterior_weights_equal_the_array_expression(monkeypatch, parallel, max_sig, prior_dims):
    """Same kept samples, best sample, counts and (to float rounding of the sums) the same weights,
    pmax and log-likelihood, for peaked and flat posteriors, excluded samples (inf diff2, -inf
    priors), 1D and per-particle priors and caps on the number kept."""
    monkeypatch.setattr(_kernels, "parallel_allowed", lambda: parallel)
    rng = np.random.default_rng(3)
    P, R, T = 6, 140, 9
    d2 = rng.normal(0, 1, (P, R, T)) * np.array([0.01, 0.5, 3, 10, 40, 200])[:, None, None]
    d2[1, :5] = np.inf
    lpr = None if prior_dims[0] == 0 else (rng.normal(0, 1, (R,) if prior_dims[0] == 1 else (P, R)))
    lpt = rng.normal(0, 0.3, (T,) if prior_dims[1] == 1 else (P, T))
    if lpr is not None:
        lpr = np.where(rng.random(lpr.shape) < 0.2, -np.inf, lpr)
    fast, ref = _weights_pair(monkeypatch, d2, lpr, lpt, 0.999, max_sig)
    np.testing.assert_array_equal(fast.best, ref.best)
    np.testing.assert_array_equal(fast.n_significant, ref.n_significant)
    np.testing.assert_array_equal(fast.w > 0, ref.w > 0)
    np.testing.assert_allclose(fast.w, ref.w, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(fast.pmax, ref.pmax, rtol=1e-12)
    np.testing.assert_allclose(fast.threshold, ref.threshold, rtol=1e-12)
    np.testing.assert_allclose(fast.log_likelihood, ref.log_likelihood, rtol=1e-12)
    # the kept weights: at least the fraction of the total, at most max_sig of them
    assert np.all(ref.n_significant >= 1)
    if max_sig is not None:
        assert np.all(fast.n_significant <= max_sig)
    np.testing.assert_allclose(fast.w.sum(axis=(1, 2)), 1.0, rtol=1e-12)
