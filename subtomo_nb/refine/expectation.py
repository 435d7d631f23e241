"""E-step of one batch of particles of one half-set: coarse pass, adaptive oversampling, sums.

For a batch the work is (relion-conventions.md §6.6, §6.9; design.md):

1. Coarse pass on the coarse grid and the coarse image size: priors for the whole batch in one
   call, the union of reachable orientations, reference values for them (one interpolation), and
   ``diff2`` by two GEMMs (:mod:`subtomo_nb.refine.estep`).
2. Significant coarse samples (cumulative weight 0.999) and their oversampled children (4
   directions × 2 psi × 8 translations for oversampling 1), padded to a common size across the
   batch and scored by batched matrix products at the full current image size.
3. Posterior weights, RELION's per-particle statistics, and the M-step sums: translation-weighted
   data and CTF² for back-projection, and per-shell noise power for sigma2.

Nothing here loops over particles or orientations in Python.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.grid import freq_grid, half_points, shell_index
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.healpix import oversampled_children, psi_step
from subtomo_nb.geometry.translations import oversampled_translations
from subtomo_nb.refine._kernels import add_rows
from subtomo_nb.refine.estep import (
    ReferenceTerms,
    gemm,
    particle_terms,
    phase_factors,
    squared_differences,
    translated_terms,
    translation_sums,
    weights_from_diff2,
)
from subtomo_nb.refine.sampling import OrientationGrid, Sampling, batch_orientation_prior, log_translation_prior

#: Multiplicity below which a voxel carries no data (RELION's --subtomo_multi_thr).
MULTIPLICITY_THRESHOLD = 0.01
#: Rotations scored per GEMM chunk in the coarse pass (bounds memory).
ROTATION_CHUNK = 256
#: Largest (particles × fine orientations × Fourier points) of one fine-pass chunk.
FINE_BUDGET = 6_000_000
#: At most this many significant coarse samples per particle go to the fine pass (the highest
#: weights). RELION's CPU auto-refine has no cap (``--maxsig -1``); without one, a noisy particle
#: in a global search at HEALPix order 3 brought thousands of coarse samples and the fine pass of
#: one particle needed several GB. A deviation from RELION, bounding memory per particle.
MAX_SIGNIFICANT_COARSE = 1000
#: Largest (coarse orientations × Fourier points) of the coarse grid whose reference values a
#: search restricted by priors keeps for the whole iteration (:class:`CoarseReferenceCache`; only
#: the rows some batch reaches are filled: 12 bytes each in float32, e.g. HEALPix order 3 in C1
#: with a 10° tilt prior, box 32: 18,000 rows, ~1.9 GB per half-set).
COARSE_CACHE_POINTS = 400_000_000
#: Largest (fine orientations × Fourier points) whose reference values a global search keeps for
#: the whole iteration ([Re, Im] and |V|² in float32: 12 bytes each, at most ~770 MB per half-set).
FINE_CACHE_POINTS = 64_000_000


@dataclass
class FourierSelection:
    """Non-redundant half-transform points with ``0 < |k| <= radius`` (each Friedel pair once).

    Attributes
    ----------
    index : flat indices into the ``(N, N, N//2+1)`` half array.
    points : ``(K, 3)`` frequencies (x, y, z), Fourier pixels.
    shell : ``(K,)`` integer shells ``round(|k|)``.
    """

    index: np.ndarray
    points: np.ndarray
    shell: np.ndarray

    @classmethod
    def make(cls, box: int, radius: float) -> "FourierSelection":
        kx, ky, kz = (np.broadcast_to(g, (box, box, box // 2 + 1)) for g in freq_grid(box, 3))
        sh = shell_index(box, 3)
        r2 = kx * kx + ky * ky + kz * kz
        redundant = (kx == 0) & ((ky < 0) | ((ky == 0) & (kz < 0)))
        keep = (r2 > 0) & (r2 <= radius * radius) & ~redundant
        idx = np.flatnonzero(keep.ravel())
        pts = half_points(box, 3).reshape(-1, 3)[idx]
        return cls(idx, pts.astype(np.float64), sh.ravel()[idx])


@dataclass
class BatchResult:
    """E-step results of one batch (P particles).

    Attributes
    ----------
    rot, tilt, psi : (P,) best fine orientation (degrees).
    shift_px : (P, 3) best translation relative to the offsets the data were centred with.
    pmax, n_significant, log_likelihood : (P,) RELION's rlnMaxValueProbDistribution,
        rlnNrOfSignificantSamples, rlnLogLikeliContribution.
    sigma2_num, sigma2_den : (n_shells,) noise power sums per shell (numerator Σ w |W V − X φ|²,
        denominator 2 Σ M).
    """

    rot: np.ndarray
    tilt: np.ndarray
    psi: np.ndarray
    shift_px: np.ndarray
    pmax: np.ndarray
    n_significant: np.ndarray
    log_likelihood: np.ndarray
    sigma2_num: np.ndarray
    sigma2_den: np.ndarray


def _gather(arr: np.ndarray, sel: FourierSelection) -> np.ndarray:
    return arr.reshape(arr.shape[0], -1)[:, sel.index]


def reference_terms(projector: Projector, rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray,
                    points: np.ndarray) -> ReferenceTerms:
    """:class:`ReferenceTerms` (``[Re V, Im V]``, ``|V|²``) of orientations ``(R,)`` at points ``(K, 3)``.

    Filled chunk by chunk, so the complex values of all orientations are never held at once.
    """
    A = euler_to_matrix(rot, tilt, psi)
    R, K = len(rot), len(points)
    rdt = projector.rdtype
    out = ReferenceTerms(stacked=np.empty((R, 2 * K), dtype=rdt), power=np.empty((R, K), dtype=rdt))
    _interpolate_rows(out, projector, A, None, points)
    return out


def _interpolate_rows(out: "ReferenceTerms | _LazyReferenceRows", projector: Projector, A: np.ndarray,
                      rows: np.ndarray | None, points: np.ndarray) -> None:
    """Write the reference values at the orientations ``A`` (R, 3, 3) into ``rows`` of ``out``.

    ``rows`` None means rows ``0 .. R-1``. :data:`ROTATION_CHUNK` orientations at a time (the
    array path forms their complex values first).
    """
    rows = np.arange(len(A)) if rows is None else np.asarray(rows)
    for s in range(0, len(A), ROTATION_CHUNK):
        sl = slice(s, s + ROTATION_CHUNK)
        projector.sample_terms(A[sl], points, rows[sl], out.stacked, out.power)


def expectation_batch(
    projector: Projector,
    data: np.ndarray,
    ctf2: np.ndarray,
    multiplicity: np.ndarray | None,
    sigma2: np.ndarray,
    sampling: Sampling,
    prior_angles: np.ndarray,
    *,
    pixel_size_A: float,
    coarse_radius: float,
    fine_radius: float,
    sigma_offset_A: float,
    backprojector: BackProjector | None = None,
    adaptive_fraction: float = 0.999,
    firstiter_cc: bool = False,
    coarse_cache: dict | None = None,
    max_significant: int | None = None,
) -> BatchResult:
    """Score, weight and accumulate one batch of particles.

    Parameters
    ----------
    projector
        Projector of the half-set's current reference.
    data, ctf2, multiplicity
        ``(P, N, N, N//2+1)`` particle transforms (already shifted by their current offsets),
        CTF² sums and multiplicities (None: ones).
    sigma2
        ``(N//2+1,)`` noise power per shell.
    sampling
        Coarse sampling of this iteration.
    prior_angles
        ``(P, 3)`` current (or prior) rot, tilt, psi (degrees): centres of the angular priors.
    pixel_size_A
        Pixel size (Å).
    coarse_radius, fine_radius
        Fourier radii (pixels) of the coarse and fine passes (coarse and current image size / 2).
    sigma_offset_A
        Width of the translation prior (Å).
    backprojector
        Where the weighted sums go (None: E-step only).
    adaptive_fraction
        RELION's significance fraction (0.999).
    firstiter_cc
        Score by normalised cross-correlation and keep only the best sample (RELION's
        ``--firstiter_cc`` first iteration).
    max_significant
        At most this many significant coarse samples per particle go to the fine pass
        (RELION's ``--maxsig``; VDAM's 100 K); the smaller of this and
        :data:`MAX_SIGNIFICANT_COARSE` applies. None or <= 0: only the E-step's own bound.
    coarse_cache
        Dict reused across the batches of one iteration and half-set: holds the reference values
        of global coarse searches, which are the same for every batch, the fine orientations'
        reference values (:class:`FineReferenceCache`), and (when ``backprojector`` is
        given) the particle-frame sums per fine orientation. **Call** :func:`flush_rotation_sums`
        on it after the last batch: only then are those sums back-projected.
    """
    P, N = data.shape[0], data.shape[1]
    mult = np.ones(ctf2.shape, dtype=ctf2.dtype) if multiplicity is None else multiplicity
    sig2_shell = np.maximum(np.asarray(sigma2, dtype=np.float64), 1e-30)
    cdt = np.complex64 if data.dtype == np.complex64 else np.complex128
    rdt = np.float32 if cdt == np.complex64 else np.float64

    # ---------------- coarse pass
    sel_c = FourierSelection.make(N, coarse_radius)
    Xc, Wc, Mc = _gather(data, sel_c), _gather(ctf2, sel_c), _gather(mult, sel_c)
    s2c = sig2_shell[sel_c.shell].astype(rdt)
    grid = sampling.grid()
    n_grid = len(grid)
    ridx, lp = batch_orientation_prior(sampling, grid, *prior_angles.T)   # reachable orientations
    key = ("coarse", sampling.healpix_order, sampling.sym, coarse_radius)
    if coarse_cache is not None and len(ridx) == n_grid:  # global search: same for all batches
        if key not in coarse_cache:
            coarse_cache[key] = reference_terms(projector, *grid.angles(ridx)[:3], sel_c.points)
        Vc = coarse_cache[key]
    elif coarse_cache is not None and n_grid * len(sel_c.index) <= COARSE_CACHE_POINTS:
        # searches restricted by priors (tilt prior, local searches): each coarse orientation's
        # reference values are interpolated once per iteration, when a batch first reaches it
        lkey = ("coarse_rows",) + key[1:]
        if lkey not in coarse_cache:
            coarse_cache[lkey] = CoarseReferenceCache(n_grid, len(sel_c.index), projector.rdtype)
        Vc = coarse_cache[lkey].fill(projector, grid, sel_c.points, ridx)
    else:
        Vc = reference_terms(projector, *grid.angles(ridx)[:3], sel_c.points)
    shifts_c = sampling.translations_px(pixel_size_A)
    lpt_c = log_translation_prior(shifts_c, sigma_offset_A, pixel_size_A)
    phi_c = _cached(coarse_cache, ("coarse_phases", N, coarse_radius, shifts_c.tobytes(), np.dtype(rdt).str),
                    lambda: phase_factors(sel_c.points.astype(rdt), shifts_c.astype(rdt), N))
    if firstiter_cc:
        terms = particle_terms(Xc, Wc, Mc, np.full_like(s2c, 0.5), MULTIPLICITY_THRESHOLD)
    else:
        terms = particle_terms(Xc, Wc, Mc, s2c, MULTIPLICITY_THRESHOLD)
    d2 = np.empty((P, len(ridx), len(shifts_c)))
    lhs = translated_terms(terms, phi_c)                               # formed once per batch
    for s in range(0, len(ridx), ROTATION_CHUNK):
        sl = slice(s, s + ROTATION_CHUNK)
        squared_differences(terms, Vc.rows(sl), phi_c, lhs=lhs, out=d2[:, sl])
    del lhs
    if firstiter_cc:
        d2 = _cc_scores(terms, Vc.power, d2)
    d2[~np.isfinite(lp)] = np.inf
    if firstiter_cc:
        # RELION's --firstiter_cc picks the best correlation: the priors only exclude samples, they
        # do not weigh correlations (a Gaussian offset prior would outweigh any correlation
        # difference and pin the translations at zero)
        wc = weights_from_diff2(d2, np.where(np.isfinite(lp), 0.0, -np.inf), None, adaptive_fraction=1.0,
                                max_significant=1)
    else:
        cap = MAX_SIGNIFICANT_COARSE
        if max_significant is not None and max_significant > 0:
            cap = min(cap, int(max_significant))
        wc = weights_from_diff2(d2, lp, lpt_c, adaptive_fraction=adaptive_fraction, max_significant=cap)

    # ---------------- fine pass, in chunks of particles that fit the memory budget
    sig = wc.w > 0                                                     # (P, Rc, Tc)
    sel_f = FourierSelection.make(N, fine_radius)
    fine_ref = None
    n_child = oversampled_children(grid.pixel[:1], grid.psi[:1], sampling.healpix_order, sampling.oversampling,
                                   psi_step(sampling.healpix_order))[0].shape[-1]
    if coarse_cache is not None and n_grid * n_child * len(sel_f.index) <= FINE_CACHE_POINTS:
        # the fine orientations are children of the coarse grid, shared by the particles (all of
        # them in a global search; neighbourhoods of their priors otherwise): each one's
        # reference values are interpolated once per iteration, when first needed
        fkey = ("fine", sampling.healpix_order, sampling.oversampling, sampling.sym, fine_radius)
        if fkey not in coarse_cache:
            coarse_cache[fkey] = FineReferenceCache(n_grid, len(sel_f.index), projector.rdtype, n_child)
        fine_ref = coarse_cache[fkey]
        fine_ref.fill(projector, sampling, grid, sel_f.points, ridx[np.nonzero(sig.any(axis=2))[1]])
    fine_phases = _fine_phase_table(coarse_cache, shifts_c, sampling, sel_f, pixel_size_A, N, rdt, cdt)
    per_particle = (sig.any(axis=2).sum(axis=1) + sig.any(axis=1).sum(axis=1)) * 8 * len(sel_f.index)
    results = []
    start = 0
    while start < P:
        stop = start + 1
        while stop < P and per_particle[start:stop + 1].max() * (stop + 1 - start) <= FINE_BUDGET:
            stop += 1
        part = slice(start, stop)
        results.append(_fine_pass(
            projector, data[part], ctf2[part], mult[part], sig2_shell, sampling, sig[part], lp[part],
            ridx, grid, shifts_c, sel_f, fine_phases, pixel_size_A=pixel_size_A, sigma_offset_A=sigma_offset_A,
            backprojector=backprojector, adaptive_fraction=adaptive_fraction, firstiter_cc=firstiter_cc,
            cdt=cdt, rdt=rdt, rotation_sums=_rotation_sums(coarse_cache, backprojector, sel_f, n_grid, cdt, rdt),
            fine_ref=fine_ref))
        start = stop
    return BatchResult(
        rot=np.concatenate([r.rot for r in results]), tilt=np.concatenate([r.tilt for r in results]),
        psi=np.concatenate([r.psi for r in results]), shift_px=np.concatenate([r.shift_px for r in results]),
        pmax=np.concatenate([r.pmax for r in results]),
        n_significant=np.concatenate([r.n_significant for r in results]),
        log_likelihood=np.concatenate([r.log_likelihood for r in results]),
        sigma2_num=sum(r.sigma2_num for r in results), sigma2_den=sum(r.sigma2_den for r in results),
    )


def _cached(cache: dict | None, key: tuple, make: Any) -> Any:
    """``cache[key]``, made by ``make()`` when missing (``make()`` itself when there is no cache)."""
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


#: Largest table of fine-translation phases kept for an iteration (bytes); beyond it each chunk
#: computes the phases of its own fine translations.
FINE_PHASE_BYTES = 256 << 20


def _fine_phase_table(cache: dict | None, shifts_c: np.ndarray, sampling: Sampling, sel_f: "FourierSelection",
                      pixel_size_A: float, N: int, rdt: type, cdt: type) -> np.ndarray | None:
    """``φ_t(k)`` of every fine translation (row ``coarse · children + child``) at the fine points.

    The fine translations are the oversampled children of the coarse grid, the same for every
    particle; their phases are computed once per iteration (kept in ``cache``) instead of once
    per particle and fine-pass chunk. None when the table would exceed :data:`FINE_PHASE_BYTES`.
    """
    ft = oversampled_translations(shifts_c, sampling.offset_step_A, pixel_size_A, sampling.oversampling)
    ft = ft.reshape(-1, ft.shape[-1])
    if cache is None or len(ft) * len(sel_f.index) * np.dtype(cdt).itemsize > FINE_PHASE_BYTES:
        return None
    key = ("fine_phases", N, len(sel_f.index), ft.tobytes(), np.dtype(cdt).str)
    if key not in cache:
        cache[key] = phase_factors(sel_f.points.astype(rdt), ft.astype(rdt), N).astype(cdt, copy=False)
    return cache[key]


class _LazyReferenceRows:
    """``stacked`` ``[Re V, Im V]`` ``(rows, 2K)`` and ``power`` ``|V|²`` ``(rows, K)`` of a fixed grid
    of orientations, allocated empty: rows never written take no memory."""

    def __init__(self, n_rows: int, n_points: int, rdtype: type) -> None:
        self.stacked = np.empty((n_rows, 2 * n_points), dtype=rdtype)
        self.power = np.empty((n_rows, n_points), dtype=rdtype)


class CoarseReferenceCache(_LazyReferenceRows):
    """Reference values of the coarse orientations of one iteration, interpolated when first needed.

    A search restricted by priors reaches a different set of orientations in each batch (or the
    same band, e.g. a tilt prior shared by all particles); the rows are interpolated once per
    iteration and reused by every batch. Orientations get rows (*slots*) in the order they are
    first reached, so the orientations of a batch are mostly consecutive rows, which the coarse
    pass reads as views instead of copies (all of them when every batch reaches the same band).
    ``(Rc, 2K)`` and ``(Rc, K)`` rows are reserved; only those written take memory.
    """

    def __init__(self, n_coarse: int, n_points: int, rdtype: type) -> None:
        super().__init__(n_coarse, n_points, rdtype)
        self.slot = np.full(n_coarse, -1, dtype=np.int64)
        self.n_used = 0
        # a dask worker's tasks share the cache; with several threads per worker two batches
        # may fill at once, and slots must be handed out (and written) by one at a time
        self._lock = threading.Lock()

    @property
    def filled(self) -> np.ndarray:
        """``(Rc,)`` bool: which coarse orientations have their row."""
        return self.slot >= 0

    def fill(self, projector: Projector, grid: OrientationGrid, points: np.ndarray,
             rows: np.ndarray) -> "CachedRows":
        """Interpolate the ``rows`` (indices into the coarse ``grid``) not filled yet.

        Returns
        -------
        The rows, in the order given, as the coarse pass reads them (:class:`CachedRows`).
        """
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            need = rows[self.slot[rows] < 0]
            if len(need):
                need = need[np.sort(np.unique(need, return_index=True)[1])]   # first-reached order
                slots = np.arange(self.n_used, self.n_used + len(need))
                _interpolate_rows(self, projector, euler_to_matrix(*grid.angles(need)[:3]), slots, points)
                self.slot[need] = slots
                self.n_used += len(need)
            return CachedRows(self, self.slot[rows])


def _rows_of(a: np.ndarray, i: np.ndarray) -> np.ndarray:
    """``a[i]``: a view where ``i`` are consecutive rows, else a copy."""
    if len(i) and i[-1] - i[0] == len(i) - 1 and (len(i) == 1 or np.all(np.diff(i) == 1)):
        return a[i[0]:i[-1] + 1]
    return np.take(a, i, axis=0)


@dataclass
class CachedRows:
    """Rows ``slots`` of a :class:`CoarseReferenceCache`, read as :class:`ReferenceTerms`."""

    cache: CoarseReferenceCache
    slots: np.ndarray

    def __len__(self) -> int:
        return len(self.slots)

    def rows(self, sl: slice) -> ReferenceTerms:
        """The orientations ``sl`` of this batch (views of consecutive cache rows, else copies)."""
        i = self.slots[sl]
        return ReferenceTerms(_rows_of(self.cache.stacked, i), _rows_of(self.cache.power, i))

    @property
    def power(self) -> np.ndarray:
        """``|V|²`` of all rows ``(len(slots), K)``."""
        return _rows_of(self.cache.power, self.slots)


class FineReferenceCache(_LazyReferenceRows):
    """Reference values of the fine orientations of one iteration, interpolated when first needed.

    Row ``coarse·8 + child`` holds the child ``child`` of coarse orientation ``coarse`` (of the
    whole coarse grid): ``stacked`` ``[Re V, Im V]`` ``(Rc·8, 2K)`` and ``power`` ``|V|²``
    ``(Rc·8, K)``. Rows are filled for the coarse orientations some particle found significant.
    """

    def __init__(self, n_coarse: int, n_points: int, rdtype: type, n_child: int = 8) -> None:
        super().__init__(n_coarse * n_child, n_points, rdtype)
        self.n_child = n_child
        self.filled = np.zeros(n_coarse, dtype=bool)

    def __getitem__(self, i: int) -> np.ndarray:
        return (self.stacked, self.power)[i]

    def fill(self, projector: Projector, sampling: Sampling, grid: OrientationGrid,
             points: np.ndarray, coarse_ids: np.ndarray) -> None:
        """Interpolate the children of ``coarse_ids`` (indices into the coarse grid) not filled yet."""
        need = np.unique(np.asarray(coarse_ids, dtype=np.int64))
        need = need[~self.filled[need]]
        if len(need) == 0:
            return
        _, _, psi_n, pix_n = grid.angles(need)
        frot, ftilt, fpsi = oversampled_children(pix_n, psi_n, sampling.healpix_order,
                                                 sampling.oversampling, psi_step(sampling.healpix_order))
        c = frot.shape[-1]
        if c != self.n_child:
            raise ValueError(f"{c} children per coarse orientation, the cache was made for {self.n_child}")
        A = euler_to_matrix(frot.reshape(-1), ftilt.reshape(-1), fpsi.reshape(-1))
        _interpolate_rows(self, projector, A, (need[:, None] * c + np.arange(c)).reshape(-1), points)
        self.filled[need] = True


def _fine_pass(projector: Projector, data: np.ndarray, ctf2: np.ndarray, mult: np.ndarray,
               sig2_shell: np.ndarray, sampling: Sampling, sig: np.ndarray, lp: np.ndarray,
               ridx: np.ndarray, grid: OrientationGrid, shifts_c: np.ndarray,
               sel_f: "FourierSelection", fine_phases: np.ndarray | None, *, pixel_size_A: float, sigma_offset_A: float,
               backprojector: BackProjector | None, adaptive_fraction: float, firstiter_cc: bool,
               cdt: type, rdt: type, rotation_sums: "RotationSums | None" = None,
               fine_ref: FineReferenceCache | None = None) -> BatchResult:
    """Oversampled children of the significant coarse samples of a few particles, scored and summed."""
    P, N = data.shape[0], data.shape[1]
    sig_r = sig.any(axis=2)                                            # (P, Rc)
    sig_t = sig.any(axis=1)                                            # (P, Tc)
    nr = sig_r.sum(axis=1)
    nt = sig_t.sum(axis=1)
    Rmax, Tmax = int(nr.max()), int(nt.max())
    # padded per-particle lists of significant coarse rotations / translations (index -1 = none)
    r_list = _padded_indices(sig_r, Rmax)                              # (P, Rmax)
    t_list = _padded_indices(sig_t, Tmax)                              # (P, Tmax)
    o = sampling.oversampling
    cr = ridx[np.maximum(r_list, 0)]
    _, _, psi_cr, pix_cr = grid.angles(cr)
    frot, ftilt, fpsi = oversampled_children(pix_cr, psi_cr, sampling.healpix_order, o,
                                             psi_step(sampling.healpix_order))   # (P, Rmax, 8)
    nchild_r = frot.shape[-1]
    ft_px = oversampled_translations(shifts_c, sampling.offset_step_A, pixel_size_A, o)  # (Tc, 8, 3)
    nchild_t = ft_px.shape[1]
    fshift = ft_px[np.maximum(t_list, 0)]                              # (P, Tmax, 8, 3)
    # which fine (r, t) pairs derive from a significant coarse pair
    pair_ok = np.take_along_axis(
        np.take_along_axis(sig, np.maximum(r_list, 0)[:, :, None], axis=1), np.maximum(t_list, 0)[:, None, :], axis=2)
    pair_ok &= (r_list >= 0)[:, :, None] & (t_list >= 0)[:, None, :]   # (P, Rmax, Tmax)
    Rf, Tf = Rmax * nchild_r, Tmax * nchild_t
    frot, ftilt, fpsi = (a.reshape(P, Rf) for a in (frot, ftilt, fpsi))
    fshift = fshift.reshape(P, Tf, 3)
    valid = np.repeat(np.repeat(pair_ok, nchild_r, axis=1), nchild_t, axis=2)  # (P, Rf, Tf)
    # priors of the fine samples: their coarse parent's orientation prior, their own offset prior
    lp_parent = np.take_along_axis(lp, np.maximum(r_list, 0), axis=1)  # (P, Rmax)
    lp_f = np.repeat(lp_parent, nchild_r, axis=1)
    lpt_f = log_translation_prior(fshift, sigma_offset_A, pixel_size_A)

    Xf, Wf, Mf = _gather(data, sel_f), _gather(ctf2, sel_f), _gather(mult, sel_f)
    s2f = sig2_shell[sel_f.shell].astype(rdt)
    Af = euler_to_matrix(frot, ftilt, fpsi)                            # (P, Rf, 3, 3)
    # padding entries (-1) read the particle's first significant orientation: a filled cache row
    # (excluded from the weights below; an unfilled row holds whatever memory it was given)
    r_safe = np.where(r_list >= 0, r_list, r_list[:, :1])
    fine_ids = (ridx[r_safe][:, :, None] * nchild_r + np.arange(nchild_r)).reshape(P, Rf)
    if fine_ref is not None:   # rows of the iteration's fine reference values
        rhs = np.take(fine_ref[0], fine_ids, axis=0)                   # (P, Rf, 2K): [Re V, Im V]
        power = np.take(fine_ref[1], fine_ids, axis=0)                 # (P, Rf, K): |V|²
    else:
        Vf = projector.sample(Af.reshape(-1, 3, 3), sel_f.points).reshape(P, Rf, -1)
        rhs = np.concatenate([Vf.real, Vf.imag], axis=-1)              # (P, Rf, 2K)
        power = Vf.real ** 2 + Vf.imag ** 2
        del Vf
    K = len(sel_f.index)
    # phases of the fine translations: rows (coarse translation · children + child) of the table
    fine_t = (np.maximum(t_list, 0)[:, :, None] * nchild_t + np.arange(nchild_t)).reshape(P, Tf)
    if fine_phases is None:   # no iteration table: this chunk's distinct fine translations only
        uniq_t, inv_t = np.unique(fine_t, return_inverse=True)
        rows = phase_factors(sel_f.points.astype(rdt), ft_px.reshape(-1, 3)[uniq_t].astype(rdt), N).astype(cdt, copy=False)
        phi_f = np.take(rows, inv_t.reshape(P, Tf), axis=0)            # (P, Tf, K)
    else:
        phi_f = np.take(fine_phases, fine_t, axis=0)                   # (P, Tf, K)
    terms_f = particle_terms(Xf, Wf, Mf, np.full_like(s2f, 0.5) if firstiter_cc else s2f, MULTIPLICITY_THRESHOLD)
    Aterm = gemm(power, terms_f.a[:, :, None].astype(power.dtype))[..., 0]   # (P, Rf): Σ_k a |V|²
    bphi = terms_f.b[:, None, :] * phi_f                               # (P, Tf, K)
    lhs = np.concatenate([bphi.real, bphi.imag], axis=-1)              # (P, Tf, 2K)
    Bterm = _fine_products(lhs, rhs, pair_ok, nchild_t, nchild_r)    # (P, Tf, Rf)
    d2f = Aterm[:, :, None] - 2.0 * Bterm.transpose(0, 2, 1) + terms_f.c[:, None, None]
    if firstiter_cc:
        norm_v = np.sqrt(np.maximum(Aterm, 1e-30))
        norm_x = np.sqrt(np.maximum(terms_f.c, 1e-30))
        d2f = -Bterm.transpose(0, 2, 1) / (norm_v[:, :, None] * norm_x[:, None, None])
    lp_f = np.where(np.isfinite(lp_f), lp_f, -np.inf)
    d2f = np.where(valid & np.isfinite(lp_f)[:, :, None], d2f, np.inf)
    if firstiter_cc:   # the best correlation, priors only excluding (as the coarse pass)
        wf = weights_from_diff2(d2f, np.where(np.isfinite(lp_f), 0.0, -np.inf), None, adaptive_fraction=1.0,
                                max_significant=1)
    else:
        wf = weights_from_diff2(d2f, lp_f, lpt_f, adaptive_fraction=adaptive_fraction)
    best_r, best_t = np.divmod(wf.best, Tf)
    pidx = np.arange(P)

    # ---------------- M-step sums, over the fine orientations that kept some weight
    inv = np.where(Mf > MULTIPLICITY_THRESHOLD, 1.0 / s2f, 0.0).astype(rdt)
    kept = wf.w.sum(axis=2) > 0                                        # (P, Rf)
    kidx = _padded_indices(kept, max(int(kept.sum(axis=1).max()), 1))  # (P, Rk), -1 = padding
    kk = np.maximum(kidx, 0)
    w = _take_rows(wf.w, kk) * (kidx >= 0)[:, :, None]                # (P, Rk, Tf)
    rk = _take_rows(rhs, kk)                                           # (P, Rk, 2K)
    conj_v = np.empty(rk.shape[:2] + (K,), dtype=cdt)                  # (P, Rk, K): conj(V)
    conj_v.real = rk[..., :K]
    np.negative(rk[..., K:], out=conj_v.imag)
    del rk
    power = _take_rows(power, kk)                                      # (P, Rk, K)
    Y = translation_sums(w, phi_f)                                     # (P, Rk, K): Σ_t w φ_t
    wr = w.sum(axis=2)                                                 # (P, Rk)
    # noise power per shell: Σ_rt w |W V - X φ|² = W² Σ_r wr |V|² - 2 Re(W X Σ_r conj(V) Y) + |X|²
    valid_k = Mf > MULTIPLICITY_THRESHOLD
    U1 = np.einsum("pr,prk->pk", wr, power)
    U2 = np.einsum("prk,prk->pk", conj_v, Y)
    del conj_v, power
    if backprojector is not None:
        # samples that share a fine orientation (same coarse parent and child) are summed in the
        # particle frame first, so each distinct orientation is back-projected once: a sparse
        # (distinct orientations × kept samples) sum of the samples' data Y X / sigma2
        pk, rk_i = np.nonzero(kidx >= 0)
        col = kk[pk, rk_i]
        uniq, first, inverse = np.unique(fine_ids[pk, col], return_index=True, return_inverse=True)
        Y *= (Xf * inv)[:, None, :]                                    # in place: Y X / sigma2
        group = scipy.sparse.csr_matrix((np.ones(len(pk), dtype=cdt), (inverse, pk * Y.shape[1] + rk_i)),
                                        shape=(len(uniq), Y.shape[0] * Y.shape[1]))
        vals = group @ Y.reshape(-1, K)                                # (U, K)
        per_particle = np.zeros((len(uniq), P), dtype=rdt)             # Σ wr of each orientation, by particle
        np.add.at(per_particle, (inverse, pk), wr[pk, rk_i])
        wts = per_particle @ (Wf * inv)                                # (U, K)
        A_u = Af[pk[first], col[first]]
        if rotation_sums is not None:
            rotation_sums.add(uniq, A_u, vals, wts)
        else:
            backprojector.insert(A_u, vals, wts, sel_f.points)
    resid = Wf ** 2 * U1 - 2.0 * np.real(Wf * Xf * U2) + (Xf.real ** 2 + Xf.imag ** 2)
    nsh = N // 2 + 1
    num = np.bincount(np.broadcast_to(sel_f.shell, resid.shape)[valid_k], weights=resid[valid_k], minlength=nsh)[:nsh]
    den = 2.0 * np.bincount(np.broadcast_to(sel_f.shell, Mf.shape)[valid_k], weights=Mf[valid_k], minlength=nsh)[:nsh]
    return BatchResult(
        rot=frot[pidx, best_r], tilt=ftilt[pidx, best_r], psi=fpsi[pidx, best_r],
        shift_px=fshift[pidx, best_t], pmax=np.asarray(wf.pmax), n_significant=np.asarray(wf.n_significant),
        log_likelihood=np.asarray(wf.log_likelihood), sigma2_num=num, sigma2_den=den,
    )


#: Fine-pass pairs of significant coarse samples multiplied per matrix-product call.
PAIR_CHUNK = 256


def _fine_products(lhs: np.ndarray, rhs: np.ndarray, pair_ok: np.ndarray, nchild_t: int, nchild_r: int
                   ) -> np.ndarray:
    """``B[p, t, r] = lhs[p, t] · rhs[p, r]`` for the fine samples whose coarse parents were significant.

    ``lhs`` ``(P, Tmax·ct, 2K)`` and ``rhs`` ``(P, Rmax·cr, 2K)`` hold each particle's children of
    its significant coarse translations and rotations, ``pair_ok`` ``(P, Rmax, Tmax)`` which
    coarse (rotation, translation) pairs were significant. Where most of the ``Rmax × Tmax``
    block is significant, one dense batched product per particle is cheapest; where the
    significant pairs are a small part of it (broad posteriors spread over many rotations and
    translations), only their ``ct × cr`` blocks are multiplied, as RELION oversamples only its
    significant coarse samples. Entries of pairs that were not significant are left at 0 (the
    caller excludes them).
    """
    P, Rmax, Tmax = pair_ok.shape
    n_pairs = int(pair_ok.sum())
    # dense: P·Rmax·Tmax blocks of ct×cr products (compute-bound); pairs: n_pairs blocks whose
    # rows are gathered first (memory-bound), so only taken where it skips over 2/3 of the blocks
    if P * Rmax * Tmax <= 3 * n_pairs:
        return gemm(lhs, rhs.transpose(0, 2, 1))
    twoK = lhs.shape[-1]
    out = np.zeros((P, Tmax, nchild_t, Rmax, nchild_r), dtype=np.result_type(lhs.dtype, rhs.dtype))
    lhs4 = lhs.reshape(P, Tmax, nchild_t, twoK)
    rhs4 = rhs.reshape(P, Rmax, nchild_r, twoK)
    pp, rr, tt = np.nonzero(pair_ok)
    for s in range(0, n_pairs, PAIR_CHUNK):
        p, r, t = pp[s:s + PAIR_CHUNK], rr[s:s + PAIR_CHUNK], tt[s:s + PAIR_CHUNK]
        out[p, t, :, r, :] = gemm(lhs4[p, t], rhs4[p, r].transpose(0, 2, 1))   # (s, ct, cr)
    return out.reshape(P, Tmax * nchild_t, Rmax * nchild_r)


class RotationSums:
    """Particle-frame sums per fine orientation, back-projected once (:meth:`flush`).

    Used while the orientation ids (coarse orientation × 8 children) are few enough for dense
    ``(n_ids, K)`` arrays: many particles of a half-set then share orientations (global searches),
    and the scatter into the 3D grid, the costly step, is done once per orientation instead of
    once per particle and orientation.
    """

    def __init__(self, backprojector: BackProjector, sel: "FourierSelection", n_ids: int, cdt: type, rdt: type) -> None:
        self.bp, self.sel = backprojector, sel
        self.values = np.zeros((n_ids, len(sel.index)), dtype=cdt)
        self.weights = np.zeros((n_ids, len(sel.index)), dtype=rdt)
        self.A = np.zeros((n_ids, 3, 3))
        self.used = np.zeros(n_ids, dtype=bool)

    def add(self, ids: np.ndarray, A: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Add the sums of the distinct orientation ids ``ids``."""
        add_rows(self.values, ids, values.astype(self.values.dtype, copy=False))
        add_rows(self.weights, ids, weights.astype(self.weights.dtype, copy=False))
        self.A[ids] = A
        self.used[ids] = True

    def flush(self) -> None:
        """Back-project every orientation that received data, then reset."""
        ids = np.flatnonzero(self.used)
        for s in range(0, len(ids), ROTATION_CHUNK):
            sl = ids[s:s + ROTATION_CHUNK]
            self.bp.insert(self.A[sl], self.values[sl], self.weights[sl], self.sel.points)
        self.values[:] = 0
        self.weights[:] = 0
        self.used[:] = False


#: Largest number of fine-orientation ids kept as dense particle-frame sums.
MAX_ROTATION_SUM_IDS = 12_000


def _rotation_sums(cache: dict | None, bp: BackProjector | None, sel: "FourierSelection", n_coarse: int,
                   cdt: type, rdt: type) -> RotationSums | None:
    """The per-iteration :class:`RotationSums` held in ``cache`` (None where not worthwhile)."""
    if cache is None or bp is None or n_coarse * 8 > MAX_ROTATION_SUM_IDS:
        return None
    key = ("rotation_sums", n_coarse, len(sel.index), id(bp))
    if key not in cache:
        cache[key] = RotationSums(bp, sel, n_coarse * 8, cdt, rdt)
    return cache[key]


def flush_rotation_sums(cache: dict | None) -> None:
    """Back-project the orientation sums accumulated in ``cache`` (call after the last batch)."""
    for key, value in list((cache or {}).items()):
        if isinstance(value, RotationSums):
            value.flush()


def _cc_scores(terms: Any, power: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Negative normalised cross-correlation in the place of diff2 (``--firstiter_cc``).

    With ``sigma2 = 1/2`` the terms are ``a = W²/M``, ``b = W X/M``, ``c = Σ|X|²/M``; the
    correlation of ``W V`` with ``X φ_t`` is ``B / sqrt(A c)`` and ``B = (A + c - d2) / 2``.
    """
    A = terms.a @ power.T                                              # (P, R)
    B = 0.5 * (A[:, :, None] + terms.c[:, None, None] - d2)
    cc = B / np.sqrt(np.maximum(A, 1e-30)[:, :, None] * np.maximum(terms.c, 1e-30)[:, None, None])
    return -cc


def _take_rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[p, idx[p, j]]`` for ``a`` ``(P, R, ...)`` and ``idx`` ``(P, J)``: whole rows copied at once.

    The same as ``take_along_axis`` along axis 1, which indexes element by element.
    """
    P, R = a.shape[:2]
    flat = (np.arange(P)[:, None] * R + idx).reshape(-1)
    return np.take(a.reshape((P * R,) + a.shape[2:]), flat, axis=0).reshape(idx.shape + a.shape[2:])


def _padded_indices(mask: np.ndarray, width: int) -> np.ndarray:
    """Per row, the indices where ``mask`` is True, left-aligned and padded with −1 to ``width``."""
    P, n = mask.shape
    order = np.argsort(~mask, axis=1, kind="stable")[:, :width]
    ok = np.take_along_axis(mask, order, axis=1)
    return np.where(ok, order, -1)
