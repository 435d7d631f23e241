"""The E-step as matrix products (design.md, "The E-step as matrix products").

For particle ``p`` with CTF-premultiplied data ``X_p(k)``, CTF² sum ``W_p(k)`` and multiplicity
``M_p(k)`` (a 3D pseudo-subtomogram, RELION-4 style), a rotation ``r`` whose reference values are
``V_r(k) = F_ref(A_rᵀ k)`` and a translation ``t`` (pixels; content moved by ``+t``), RELION's
squared difference over the selected Fourier points ``k`` is::

    diff2(p, r, t) = sum_k |W_p V_r - X_p φ_t|² / (2 σ²(k) M_p(k))
                   = A[p, r] - 2 B[p, t, r] + C[p]

    A[p, r]    = sum_k a_p(k) |V_r(k)|²                 a_p = W_p² / (2 σ² M_p)
    B[p, t, r] = sum_k Re(conj(V_r(k)) b_p(k) φ_t(k))    b_p = W_p X_p / (2 σ² M_p)
    C[p]       = sum_k |X_p(k)|² / (2 σ² M_p)

with ``φ_t(k) = exp(-2πi k·t / N)``; points where ``M_p ≤ multiplicity_threshold`` are left out
(RELION: 1/M only where M > 0.1; zeroed where M < 0.01 — here both collapse to one threshold).
``A`` is one real GEMM (P×K)·(K×R); ``B`` is one real GEMM (P·T × 2K)·(2K × R) on the stacked real
and imaginary parts. Everything runs on the backend of its inputs (:func:`subtomo_nb.backend.backend_of`:
numpy, cupy or the strict test device), with array-API calls only; the numpy backend keeps its
numba kernels and a few marked in-place fast paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from subtomo_nb.backend import Backend, backend_of


@dataclass
class ParticleTerms:
    """Per-particle quantities of the E-step at the selected Fourier points.

    Attributes
    ----------
    a : (P, K) real -- ``W² / (2 σ² M)``.
    b : (P, K) complex -- ``W X / (2 σ² M)``.
    c : (P,) real -- ``Σ |X|² / (2 σ² M)``.
    """

    a: Any
    b: Any
    c: Any


def particle_terms(
    data: Any,
    ctf2: Any,
    multiplicity: Any,
    sigma2: Any,
    multiplicity_threshold: float = 0.01,
) -> ParticleTerms:
    """Precompute ``a``, ``b`` and ``c`` for a batch of particles.

    Parameters
    ----------
    data
        (P, K) complex: CTF-premultiplied particle transforms at the selected points (already
        pre-shifted by any old offset).
    ctf2
        (P, K) real: CTF² (times dose weight²) sums ``W``.
    multiplicity
        (P, K) real: multiplicity ``M`` (use ones for data without multiplicity).
    sigma2
        (K,) or (P, K) real: noise power σ² at each point (from its resolution shell).
    multiplicity_threshold
        Points with ``M`` at or below this value are excluded.
    """
    xp = backend_of(data, ctf2, multiplicity, sigma2).xp
    valid = multiplicity > multiplicity_threshold
    inv = xp.where(valid, 1.0 / (2.0 * sigma2 * xp.where(valid, multiplicity, 1.0)), 0.0)
    a = xp.astype(ctf2 * ctf2 * inv, ctf2.dtype, copy=False)
    b = xp.astype(data * xp.astype(ctf2 * inv, data.dtype), data.dtype, copy=False)
    re, im = xp.real(data), xp.imag(data)
    c = xp.sum((re ** 2 + im ** 2) * inv, axis=-1)
    return ParticleTerms(a=a, b=b, c=c)


def phase_factors(kvec: Any, shifts: Any, box: int) -> Any:
    """``φ_t(k) = exp(-2πi k·t / N)`` for translations ``t``.

    Parameters
    ----------
    kvec
        (K, 3) Fourier points (x, y, z), Fourier pixels.
    shifts
        (T, 3) translations (x, y, z), pixels.
    box
        Box size N (pixels).

    Returns
    -------
    (T, K) complex array of the same precision as ``kvec``'s float type.
    """
    be = backend_of(kvec, shifts)
    xp = be.xp
    arg = (-2.0 * np.pi / box) * (shifts @ kvec.T)
    if be.name == "numpy":   # cos and sin of a real array (vectorised) instead of a complex exp
        out = np.empty(arg.shape, dtype=np.result_type(arg.dtype, np.complex64))
        np.cos(arg, out=out.real)
        np.sin(arg, out=out.imag)
        return out
    return _complex(xp.cos(arg), xp.sin(arg), xp)


def _complex(re: Any, im: Any, xp: ModuleType) -> Any:
    """``re + i·im`` from two real arrays of one precision (exact: no rounding of either part)."""
    cdt = xp.complex64 if re.dtype == xp.float32 else xp.complex128
    return xp.astype(re, cdt) + xp.astype(im, cdt) * 1j


#: When a list, every :func:`gemm` call appends ``(a.shape, b.shape, dtype)`` to it (benchmarks
#: count the E-step's matrix-product work this way; None: off, no cost).
GEMM_RECORDER: list | None = None


def gemm(a: Any, b: Any) -> Any:
    """``a @ b`` (batched matrix product) — the E-step's matrix products all go through here."""
    out = a @ b
    if GEMM_RECORDER is not None:
        GEMM_RECORDER.append((tuple(a.shape), tuple(b.shape), str(out.dtype)))
    return out


def _stack_real(z: Any, xp: ModuleType) -> Any:
    """Concatenate real and imaginary parts along the last axis."""
    return xp.concat([xp.real(z), xp.imag(z)], axis=-1)


@dataclass
class ReferenceTerms:
    """Reference values of ``R`` orientations in the form the E-step's products take them.

    Attributes
    ----------
    stacked : (R, 2K) real -- ``[Re V, Im V]``.
    power : (R, K) real -- ``|V|²``.
    """

    stacked: Any
    power: Any

    @classmethod
    def of(cls, ref: Any) -> "ReferenceTerms":
        """From ``(R, K)`` complex reference values ``V_r(k)``."""
        xp = backend_of(ref).xp
        re, im = xp.real(ref), xp.imag(ref)
        return cls(stacked=_stack_real(ref, xp), power=re ** 2 + im ** 2)

    def __len__(self) -> int:
        return self.power.shape[0]

    def rows(self, sl: slice) -> "ReferenceTerms":
        """The orientations ``sl`` (views, no copy)."""
        return ReferenceTerms(self.stacked[sl, ...], self.power[sl, ...])


def translated_terms(terms: ParticleTerms, phases: Any, out: Any | None = None) -> Any:
    """``[Re(b_p φ_t), Im(b_p φ_t)]`` as a ``(P·T, 2K)`` real matrix (row ``p·T + t``).

    The left factor of the ``B`` product; it depends on the batch and the translations only, so
    it is formed once and multiplied with every chunk of orientations. ``out`` (numpy only): a
    C-contiguous ``(P·T, 2K)`` array of ``b``'s real precision to write into (reused between batches).
    """
    be = backend_of(terms.b, phases)
    xp = be.xp
    P, K = terms.b.shape
    T = phases.shape[0]
    rdt = xp.float32 if terms.b.dtype == xp.complex64 else xp.float64
    kernel = be.kernel("translated_terms_into")
    if kernel is not None:
        # the compiled kernel writes every element of a fresh (or the given numpy) array
        dst = xp.empty((P * T, 2 * K), dtype=rdt, device=be.device) if out is None or be.name != "numpy" else out
        if kernel(terms.b, xp.astype(phases, terms.b.dtype, copy=False), dst):
            return dst
    shifted = xp.reshape(terms.b[:, None, :] * phases[None, :, :], (P * T, K))   # (P·T, K)
    if be.name == "numpy" and out is not None:
        out[:, :K] = shifted.real
        out[:, K:] = shifted.imag
        return out
    return xp.astype(_stack_real(shifted, xp), rdt, copy=False)


def squared_differences(terms: ParticleTerms, ref: Any, phases: Any, *, lhs: Any | None = None,
                        out: Any | None = None) -> Any:
    """All squared differences ``diff2[p, r, t]`` for a batch, by two GEMMs.

    Parameters
    ----------
    terms
        Output of :func:`particle_terms` (P particles, K points).
    ref
        (R, K) complex reference values ``V_r(k)`` at the same points, or their
        :class:`ReferenceTerms`.
    phases
        (T, K) complex translation phase factors from :func:`phase_factors`.
    lhs
        :func:`translated_terms` of ``terms`` and ``phases`` when already formed (callers that
        score many chunks of orientations against one batch pass it to form it once).
    out
        (P, R, T) array to write into (its dtype is the result's; e.g. a slice of a larger one).

    Returns
    -------
    (P, R, T) real array (``out`` when given).
    """
    ref_t = ref if isinstance(ref, ReferenceTerms) else ReferenceTerms.of(ref)
    be = backend_of(ref_t.power, terms.a)
    xp = be.xp
    P = terms.a.shape[0]
    T = phases.shape[0]
    R = len(ref_t)
    if lhs is None:
        lhs = translated_terms(terms, phases)                    # (P·T, 2K)
    A = gemm(terms.a, ref_t.power.T)                              # (P, R)
    Bt = gemm(ref_t.stacked, lhs.T)                               # (R, P·T): Re·Re + Im·Im
    B = xp.permute_dims(xp.reshape(Bt, (R, P, T)), (1, 0, 2))     # (P, R, T) view
    if be.name == "numpy":   # in place, no (P, R, T) temporaries
        if out is None:
            out = np.empty((P, R, T), dtype=np.result_type(B.dtype, A.dtype, terms.c.dtype))
        np.multiply(B, -2.0, out=out)
        out += A[:, :, None]
        out += terms.c[:, None, None]
        return out
    dt = xp.result_type(B.dtype, A.dtype, terms.c.dtype)
    # the same operations in the same order as the numpy path (each rounded to the result type)
    d2 = xp.astype(B, dt) * -2.0
    d2 = d2 + xp.astype(A, dt)[:, :, None]
    return d2 + xp.astype(terms.c, dt)[:, None, None]


@dataclass
class Weights:
    """Normalised posterior weights of a batch and RELION's per-particle statistics.

    Attributes
    ----------
    w : (P, R, T) -- weights, summing to 1 per particle; zero for non-significant samples.
    pmax : (P,) -- largest weight (rlnMaxValueProbDistribution).
    n_significant : (P,) -- number of samples kept (rlnNrOfSignificantSamples).
    log_likelihood : (P,) -- ``log Σ exp(-diff2 + log prior)`` relative to the best sample,
        minus the best diff2 (rlnLogLikeliContribution).
    best : (P,) -- flat index ``r * T + t`` of the best sample.
    threshold : (P,) -- smallest kept weight (before renormalisation).
    """

    w: Any
    pmax: Any
    n_significant: Any
    log_likelihood: Any
    best: Any
    threshold: Any


def weights_from_diff2(
    diff2: Any,
    log_prior_rot: Any | None = None,
    log_prior_trans: Any | None = None,
    adaptive_fraction: float = 0.999,
    max_significant: int | None = None,
) -> Weights:
    """Posterior weights ``∝ prior · exp(-diff2)`` with RELION's significance pruning.

    The samples of each particle are sorted by weight and the highest ones are kept until
    their sum exceeds ``adaptive_fraction`` of the total (optionally at most
    ``max_significant``); the others are set to zero and the kept ones renormalised.

    Parameters
    ----------
    diff2
        (P, R, T) squared differences.
    log_prior_rot
        (R,) or (P, R) log prior of the rotations (None: uniform).
    log_prior_trans
        (T,) or (P, T) log prior of the translations (None: uniform).
    adaptive_fraction
        Cumulative weight fraction to keep (RELION's ``--adaptive_fraction``, 0.999).
    max_significant
        Cap on the number of kept samples per particle (RELION's ``--maxsig``).
    """
    be = backend_of(diff2, log_prior_rot, log_prior_trans)
    xp = be.xp
    # the compiled pass; not for fraction 1 (keep until the cumulative sum reaches 1.0 exactly),
    # where the kept set depends on how the sums round
    if adaptive_fraction < 1.0 and (max_significant is None or max_significant > 0):
        kernel = be.kernel("posterior_weights")
        fast = None if kernel is None else kernel(diff2, log_prior_rot, log_prior_trans, adaptive_fraction,
                                                  max_significant)
        if fast is not None:
            w, pmax, n_sig, log_lik, best, threshold = fast
            return Weights(w=w, pmax=pmax, n_significant=n_sig, log_likelihood=log_lik, best=best,
                           threshold=threshold)
    P, R, T = diff2.shape
    logw = -diff2
    if log_prior_rot is not None:
        lpr = log_prior_rot if log_prior_rot.ndim == 2 else log_prior_rot[None, :]
        logw = logw + lpr[:, :, None]
    if log_prior_trans is not None:
        lpt = log_prior_trans if log_prior_trans.ndim == 2 else log_prior_trans[None, :]
        logw = logw + lpt[:, None, :]
    flat = xp.reshape(logw, (P, R * T))
    best = xp.argmax(flat, axis=1)
    top = xp.take_along_axis(flat, best[:, None], axis=1)
    w = xp.exp(flat - top)
    total = xp.sum(w, axis=1, keepdims=True)
    w = w / total
    # Only weights >= (1 - fraction) / (R T) can be kept: all smaller ones sum to less than
    # 1 - fraction. Sorting just the largest C (argpartition first) gives the same threshold.
    n_cand = int(xp.max(xp.sum(xp.astype(w >= (1.0 - adaptive_fraction) / (R * T), xp.int64), axis=1)))
    if max_significant is not None:
        n_cand = min(n_cand, int(max_significant))
    n_cand = max(n_cand, 1)
    if n_cand < R * T:
        top_idx = be.argpartition(-w, n_cand - 1, axis=1)[:, :n_cand]
        top_w = xp.take_along_axis(w, top_idx, axis=1)
        sorted_w = -xp.sort(-top_w, axis=1)
    else:
        sorted_w = -xp.sort(-w, axis=1)
    cum = xp.cumulative_sum(sorted_w, axis=1)
    # number kept: first index where the cumulative sum reaches the fraction, inclusive
    n_keep = xp.sum(xp.astype(cum < adaptive_fraction, xp.int64), axis=1) + 1
    n_keep = xp.minimum(n_keep, xp.asarray(sorted_w.shape[1], dtype=n_keep.dtype, device=be.device))
    if max_significant is not None:
        n_keep = xp.minimum(n_keep, xp.asarray(int(max_significant), dtype=n_keep.dtype, device=be.device))
    threshold = xp.take_along_axis(sorted_w, (n_keep - 1)[:, None], axis=1)[:, 0]
    keep = w >= threshold[:, None]
    w = xp.where(keep, w, 0.0)
    w = w / xp.sum(w, axis=1, keepdims=True)
    best_diff2 = xp.take_along_axis(xp.reshape(diff2, (P, R * T)), best[:, None], axis=1)[:, 0]
    log_likelihood = xp.log(total[:, 0]) - best_diff2
    return Weights(
        w=xp.reshape(w, (P, R, T)),
        pmax=xp.max(w, axis=1),
        n_significant=xp.sum(xp.astype(keep, xp.int64), axis=1),
        log_likelihood=log_likelihood,
        best=best,
        threshold=threshold,
    )


def translation_sums(weights: Any, phases: Any) -> Any:
    """``Y[p, r, k] = Σ_t w[p, r, t] φ_t(k)``: the translation-weighted phase of each orientation.

    Parameters
    ----------
    weights
        (P, R, T) posterior weights.
    phases
        (T, K) phase factors shared by the batch, or (P, T, K) per particle.

    Returns
    -------
    (P, R, K) complex, one batched matrix product.
    """
    be = backend_of(weights, phases)
    xp = be.xp
    if phases.ndim == 2:
        phases = phases[None, :, :]
    complex_phases = xp.isdtype(phases.dtype, "complex floating")
    real_weights = not xp.isdtype(weights.dtype, "complex floating")
    if be.name == "numpy" and complex_phases and real_weights and phases.flags.c_contiguous:
        # real weights: one real product with the phases read as interleaved (re, im) pairs,
        # half the work of a complex product with zero imaginary weights
        rdt = phases.real.dtype
        return gemm(weights.astype(rdt, copy=False), phases.view(rdt)).view(phases.dtype)
    if complex_phases and real_weights:
        # the same half of the work as two real products (no interleaved view off the host)
        re, im = xp.real(phases), xp.imag(phases)
        w = xp.astype(weights, re.dtype, copy=False)
        return _complex(gemm(w, re), gemm(w, im), xp)
    return gemm(xp.astype(weights, phases.dtype), phases)
