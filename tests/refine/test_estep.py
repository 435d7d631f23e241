"""E-step GEMM formulation against a float64 brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.refine.estep import (
    particle_terms,
    phase_factors,
    squared_differences,
    weights_from_diff2,
)


def _problem(rng, P=5, R=7, T=9, K=60, box=16, dtype=np.float64):
    kvec = rng.integers(-box // 2, box // 2, size=(K, 3)).astype(dtype)
    ref = (rng.normal(size=(R, K)) + 1j * rng.normal(size=(R, K))).astype(np.result_type(dtype, 1j))
    data = (rng.normal(size=(P, K)) + 1j * rng.normal(size=(P, K))).astype(ref.dtype)
    ctf2 = rng.uniform(0.1, 2.0, size=(P, K)).astype(dtype)
    mult = rng.uniform(0.5, 3.0, size=(P, K)).astype(dtype)
    mult[:, :3] = 0.0  # excluded points
    sigma2 = rng.uniform(0.5, 2.0, size=K).astype(dtype)
    shifts = rng.uniform(-2, 2, size=(T, 3)).astype(dtype)
    return kvec, ref, data, ctf2, mult, sigma2, shifts, box


def _brute_diff2(kvec, ref, data, ctf2, mult, sigma2, shifts, box):
    P, R, T = data.shape[0], ref.shape[0], shifts.shape[0]
    out = np.zeros((P, R, T))
    for p in range(P):
        for r in range(R):
            for t in range(T):
                phi = np.exp(-2j * np.pi * (kvec @ shifts[t]) / box)
                valid = mult[p] > 0.01
                res = ctf2[p] * ref[r] - data[p] * phi
                out[p, r, t] = np.sum(np.abs(res[valid]) ** 2 / (2 * sigma2[valid] * mult[p][valid]))
    return out


def test_squared_differences_equal_brute_force_float64():
    rng = np.random.default_rng(1)
    kvec, ref, data, ctf2, mult, sigma2, shifts, box = _problem(rng)
    terms = particle_terms(data, ctf2, mult, sigma2)
    d2 = squared_differences(terms, ref, phase_factors(kvec, shifts, box))
    ref_d2 = _brute_diff2(kvec, ref, data, ctf2, mult, sigma2, shifts, box)
    np.testing.assert_allclose(d2, ref_d2, rtol=1e-10, atol=1e-9)


def test_float32_path_matches_float64_reference():
    rng = np.random.default_rng(2)
    prob64 = _problem(rng)
    kvec, ref, data, ctf2, mult, sigma2, shifts, box = prob64
    f32 = [kvec.astype(np.float32), ref.astype(np.complex64), data.astype(np.complex64),
           ctf2.astype(np.float32), mult.astype(np.float32), sigma2.astype(np.float32),
           shifts.astype(np.float32)]
    d64 = squared_differences(particle_terms(data, ctf2, mult, sigma2), ref, phase_factors(kvec, shifts, box))
    t32 = particle_terms(f32[2], f32[3], f32[4], f32[5])
    d32 = squared_differences(t32, f32[1], phase_factors(f32[0], f32[6], box))
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, d64, rtol=1e-4, atol=1e-3 * np.abs(d64).mean())


def test_true_pose_wins_for_noise_free_particle():
    rng = np.random.default_rng(3)
    kvec, ref, _, ctf2, mult, sigma2, shifts, box = _problem(rng, P=4, R=11, T=13)
    true_r = np.array([3, 0, 10, 7])
    true_t = np.array([5, 12, 0, 8])
    mult[:] = 1.0
    phi = phase_factors(kvec, shifts, box)
    # data shifted by -t, so that the E-step's shift by +t re-aligns it: X φ_t = W V_r
    data = ctf2 * ref[true_r] / phi[true_t]
    d2 = squared_differences(particle_terms(data, ctf2, mult, sigma2), ref, phi)
    w = weights_from_diff2(d2)
    r_best, t_best = np.unravel_index(w.best, (ref.shape[0], shifts.shape[0]))
    np.testing.assert_array_equal(r_best, true_r)
    np.testing.assert_array_equal(t_best, true_t)
    np.testing.assert_allclose(d2[np.arange(4), true_r, true_t], 0.0, atol=1e-9)


def test_weights_normalised_pruned_and_prior_applied():
    rng = np.random.default_rng(4)
    diff2 = rng.uniform(0, 6, size=(3, 20, 5))
    w = weights_from_diff2(diff2, adaptive_fraction=0.9)
    np.testing.assert_allclose(w.w.sum(axis=(1, 2)), 1.0)
    for p in range(3):
        full = np.exp(-(diff2[p] - diff2[p].min())).ravel()
        full /= full.sum()
        s = np.sort(full)[::-1]
        n = int(np.searchsorted(np.cumsum(s), 0.9) + 1)
        assert w.n_significant[p] == n
        kept = w.w[p].ravel() > 0
        np.testing.assert_allclose(w.w[p].ravel()[kept], full[kept] / full[kept].sum())
        np.testing.assert_allclose(w.log_likelihood[p], np.log(np.exp(-(diff2[p] - diff2[p].min())).sum()) - diff2[p].min())
    # a prior that strongly prefers rotation 4 moves the best sample there
    lpr = np.full(20, -50.0)
    lpr[4] = 0.0
    w2 = weights_from_diff2(diff2, log_prior_rot=lpr)
    assert np.all(w2.best // 5 == 4)


@pytest.mark.parametrize("scale", [0.01, 0.3, 3.0, 30.0])
@pytest.mark.parametrize("max_significant", [None, 5, 1000])
@pytest.mark.parametrize("fraction", [0.999, 1.0, 0.5])
def test_significance_threshold_equals_full_sort(scale, max_significant, fraction):
    """The kept set (argpartition of the candidates) equals the one from sorting every weight."""
    rng = np.random.default_rng(int(scale * 100) + (max_significant or 0))
    d2 = rng.standard_normal((7, 50, 9)) * scale
    W = weights_from_diff2(d2, adaptive_fraction=fraction, max_significant=max_significant)
    flat = -d2.reshape(7, -1)
    w = np.exp(flat - flat.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    sorted_w = -np.sort(-w, axis=1)
    n = np.minimum((np.cumsum(sorted_w, axis=1) < fraction).sum(axis=1) + 1, w.shape[1])
    if max_significant is not None:
        n = np.minimum(n, max_significant)
    threshold = np.take_along_axis(sorted_w, (n - 1)[:, None], axis=1)[:, 0]
    np.testing.assert_array_equal(W.n_significant, (w >= threshold[:, None]).sum(axis=1))
    np.testing.assert_allclose(W.threshold, threshold, rtol=1e-12)


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cp = pytest.importorskip("cupy", reason="cupy is not installed (GPU extra)")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"no CUDA device: {err}")
    rng = np.random.default_rng(6)
    kvec, ref, data, ctf2, mult, sigma2, shifts, box = _problem(rng, P=8, R=32, T=27, K=500)
    d_np = squared_differences(particle_terms(data, ctf2, mult, sigma2), ref, phase_factors(kvec, shifts, box))
    g = [cp.asarray(x) for x in (kvec, ref, data, ctf2, mult, sigma2, shifts)]
    d_cp = squared_differences(particle_terms(g[2], g[3], g[4], g[5]), g[1], phase_factors(g[0], g[6], box))
    np.testing.assert_allclose(cp.asnumpy(d_cp), d_np, rtol=1e-4)


@pytest.mark.parametrize("rdt", [np.float32, np.float64])
@pytest.mark.parametrize("per_particle", [False, True])
def test_translation_sums_of_real_weights_equal_the_complex_product(rdt, per_particle):
    from subtomo_nb.refine.estep import translation_sums

    rng = np.random.default_rng(11)
    P, R, T, K = 3, 5, 7, 40
    w = rng.uniform(0, 1, (P, R, T)).astype(rdt)
    shape = (P, T, K) if per_particle else (T, K)
    phases = np.exp(1j * rng.uniform(-np.pi, np.pi, shape)).astype(np.result_type(rdt, np.complex64))
    Y = translation_sums(w, phases)
    ref = np.einsum("prt,ptk->prk", w.astype(np.complex128), np.broadcast_to(phases, (P, T, K)).astype(np.complex128))
    assert Y.shape == (P, R, K) and Y.dtype == phases.dtype
    np.testing.assert_allclose(Y, ref, rtol=0, atol=(1e-5 if rdt == np.float32 else 1e-12) * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# the strict test device: the same functions on device arrays give the numpy run's numbers
# ---------------------------------------------------------------------------------------------
def _strict():
    pytest.importorskip("array_api_strict")
    from subtomo_nb.backend import get_backend

    return get_backend("strict")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_squared_differences_strict(dtype):
    from subtomo_nb.refine.estep import translated_terms

    be = _strict()
    rng = np.random.default_rng(21)
    prob = _problem(rng, P=4, R=6, T=5, K=50)
    kvec, ref, data, ctf2, mult, sigma2, shifts, box = prob
    cdt = np.result_type(dtype, np.complex64)
    host = [kvec.astype(dtype), ref.astype(cdt), data.astype(cdt), ctf2.astype(dtype), mult.astype(dtype),
            sigma2.astype(dtype), shifts.astype(dtype)]
    dev = [be.to_device(a) for a in host]
    t_np = particle_terms(host[2], host[3], host[4], host[5])
    t_dev = particle_terms(dev[2], dev[3], dev[4], dev[5])
    for a, b in ((t_np.a, t_dev.a), (t_np.b, t_dev.b), (t_np.c, t_dev.c)):
        np.testing.assert_array_equal(be.to_host(b), a)
    ph_np, ph_dev = phase_factors(host[0], host[6], box), phase_factors(dev[0], dev[6], box)
    np.testing.assert_allclose(be.to_host(ph_dev), ph_np, rtol=1e-6, atol=1e-6)
    ph_dev = be.to_device(ph_np)            # the same phases: the products must agree exactly
    np.testing.assert_array_equal(be.to_host(translated_terms(t_dev, ph_dev)), translated_terms(t_np, ph_np))
    d_np = squared_differences(t_np, host[1], ph_np)
    d_dev = squared_differences(t_dev, dev[1], ph_dev)
    np.testing.assert_allclose(be.to_host(d_dev), d_np, rtol=1e-6, atol=1e-6 * np.abs(d_np).max())


@pytest.mark.parametrize("fraction, max_significant", [(0.999, None), (0.999, 5), (1.0, 1), (0.5, None)])
@pytest.mark.parametrize("priors", [False, True])
def test_weights_from_diff2_strict(fraction, max_significant, priors):
    be = _strict()
    rng = np.random.default_rng(22)
    d2 = rng.standard_normal((6, 20, 7)) * 3.0
    lpr = np.log(rng.uniform(0.1, 1, (6, 20))) if priors else None
    lpt = np.log(rng.uniform(0.1, 1, 7)) if priors else None
    W = weights_from_diff2(d2, lpr, lpt, adaptive_fraction=fraction, max_significant=max_significant)
    Wd = weights_from_diff2(be.to_device(d2), None if lpr is None else be.to_device(lpr),
                            None if lpt is None else be.to_device(lpt), adaptive_fraction=fraction,
                            max_significant=max_significant)
    for name in ("w", "pmax", "n_significant", "log_likelihood", "best", "threshold"):
        got = be.to_host(getattr(Wd, name))
        np.testing.assert_allclose(got, np.asarray(getattr(W, name)), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("per_particle", [False, True])
def test_translation_sums_strict(per_particle):
    from subtomo_nb.refine.estep import translation_sums

    be = _strict()
    rng = np.random.default_rng(23)
    P, R, T, K = 3, 5, 7, 40
    w = rng.uniform(0, 1, (P, R, T)).astype(np.float32)
    phases = np.exp(1j * rng.uniform(-np.pi, np.pi, (P, T, K) if per_particle else (T, K))).astype(np.complex64)
    Y = translation_sums(w, phases)
    Yd = translation_sums(be.to_device(w), be.to_device(phases))
    np.testing.assert_allclose(be.to_host(Yd), Y, rtol=1e-6, atol=1e-6 * np.abs(Y).max())
