"""VDAM's M-step on the strict test device: the same numbers as numpy, nothing crossing to the host."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.backend import get_backend
from subtomo_nb.initial_model.gradient import (
    GradientMoments,
    gradient,
    map_from_transform,
    reference_transform,
    vdam_ssnr,
    vdam_update,
)

pytest.importorskip("array_api_strict")

N, PAD, R_MAX = 16, 2, 6


def _sums(rng, shape):
    """Random back-projected sums of one pseudo half-set: complex data, float32 weights (as the E-step's)."""
    D = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    W = rng.uniform(0, 5, size=shape).astype(np.float32)
    return D.astype(np.complex64), W


def _run(be, P, sums, tau2):
    """Two VDAM updates and the SSNR on backend ``be`` (inputs uploaded); outputs copied to the host."""
    up = [be.to_device(a, "sums") for a in sums]
    Pd = be.to_device(P, "reference")
    moments = GradientMoments.zeros(tuple(Pd.shape), be)
    out = {}
    for it in range(2):
        grads = (gradient(up[0], up[1], Pd, PAD, R_MAX), gradient(up[2 + 0], up[2 + 1], Pd, PAD, R_MAX))
        step = vdam_update(Pd, grads, moments, pad=PAD, r_max=R_MAX, box=N, tau2_fudge=2.0, step=0.4)
        Pd = step.transform
        for name in ("fsc_estimate", "noise", "signal"):
            out[f"{name}{it}"] = be.to_host(getattr(step, name))
    out["g0"] = be.to_host(grads[0])
    out["transform"] = be.to_host(Pd)
    out["m1"] = be.to_host(moments.m1[1])
    out["m2"] = be.to_host(moments.m2)
    out["ssnr"] = be.to_host(vdam_ssnr(up[1] + up[3], be.to_device(tau2, "results"), pad=PAD, r_max=R_MAX, box=N,
                                       tau2_fudge=2.0, avg_ctf2=0.3))
    return out


def test_gradient_update_and_ssnr_strict():
    """Gradients, moments, the update rule and the SSNR on strict device arrays equal numpy's bit for bit."""
    rng = np.random.default_rng(3)
    m = N * PAD
    shape = (m, m, m // 2 + 1)
    P = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) * 0.1
    sums = (*_sums(rng, shape), *_sums(rng, shape))
    tau2 = rng.uniform(0.1, 2.0, size=N // 2 + 1)
    ref = _run(get_backend("numpy"), P, sums, tau2)
    strict = get_backend("strict")
    got = _run(strict, P, sums, tau2)
    for key, value in ref.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert np.any(ref["transform"] != P)                  # the update moved the transform
    assert 0 < ref["fsc_estimate1"][1] < 1


def test_reference_transform_and_map_strict():
    """``P`` of a map and the map of ``P`` on the strict device equal numpy's (rtol 1e-6)."""
    rng = np.random.default_rng(4)
    vol = rng.normal(size=(N, N, N))
    be = get_backend("strict")
    P = reference_transform(vol, PAD, R_MAX)
    Pd = reference_transform(be.to_device(vol, "map"), PAD, R_MAX)
    np.testing.assert_allclose(be.to_host(Pd), P, rtol=1e-6, atol=1e-12 * np.abs(P).max())
    v = map_from_transform(P, N, PAD, R_MAX)
    vd = map_from_transform(Pd, N, PAD, R_MAX)
    np.testing.assert_allclose(be.to_host(vd, "map"), v, rtol=1e-6, atol=1e-9 * np.abs(v).max())
