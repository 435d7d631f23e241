"""E-step of one batch of particles of one half-set, as four stages.

For a batch the work is (relion-conventions.md §6.6, §6.9; design.md), each stage a function
returning a small dataclass:

1. :func:`coarse_pass` -> :class:`CoarsePass`: on the coarse grid and the coarse image size,
   priors for the whole batch in one call, the union of reachable orientations, reference values
   for them (one interpolation, kept for the iteration in the :class:`IterationCache`), ``diff2``
   by two GEMMs (:mod:`subtomo_nb.refine.estep`) and the posterior weights.
2. :func:`significant_samples` -> :class:`SignificantSamples`: the coarse samples within the
   cumulative weight 0.999.
3. :func:`fine_pass` -> :class:`FinePass`: their oversampled children (4 directions × 2 psi × 8
   translations for oversampling 1), padded to a common size across the particles and scored by
   batched matrix products at the full current image size; posterior weights.
4. :func:`mstep_sums` -> :class:`MStepSums`: the translation-weighted data and CTF² back-projected
   (or deferred to the cache's orientation sums) and the per-shell noise power for sigma2.

:func:`expectation_batch` runs them, the fine pass and the M-step sums in chunks of particles
that fit a memory budget. Nothing here loops over particles or orientations in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.grid import freq_grid, half_points, shell_index
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.healpix import oversampled_children, psi_step
from subtomo_nb.geometry.translations import oversampled_translations
from subtomo_nb.refine.estep import (
    ParticleTerms,
    ReferenceTerms,
    Weights,
    gemm,
    particle_terms,
    phase_factors,
    squared_differences,
    translated_terms,
    translation_sums,
    weights_from_diff2,
)
from subtomo_nb.refine.iteration_cache import (
    MAX_ROTATION_SUM_IDS,
    ROTATION_CHUNK,
    CachedRows,
    CoarseReferenceCache,
    FineReferenceCache,
    IterationCache,
    RotationSums,
    reference_terms,
)
from subtomo_nb.refine.sampling import OrientationGrid, Sampling, batch_orientation_prior, log_translation_prior

__all__ = [
    "MULTIPLICITY_THRESHOLD", "FourierSelection", "ParticleBatch", "EStepSettings", "BatchResult", "CoarsePass",
    "SignificantSamples", "FinePass", "MStepSums", "coarse_pass", "significant_samples", "fine_pass", "mstep_sums",
    "expectation_batch", "without_ctf", "IterationCache", "CoarseReferenceCache", "FineReferenceCache",
    "CachedRows", "RotationSums", "reference_terms", "ROTATION_CHUNK", "MAX_ROTATION_SUM_IDS",
]

#: Multiplicity below which a voxel carries no data (RELION's --subtomo_multi_thr).
MULTIPLICITY_THRESHOLD = 0.01
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
    box : the box size N (pixels) the points belong to.
    radius : the largest ``|k|`` (Fourier pixels).
    """

    index: np.ndarray
    points: np.ndarray
    shell: np.ndarray
    box: int
    radius: float

    @classmethod
    def make(cls, box: int, radius: float) -> "FourierSelection":
        kx, ky, kz = (np.broadcast_to(g, (box, box, box // 2 + 1)) for g in freq_grid(box, 3))
        sh = shell_index(box, 3)
        r2 = kx * kx + ky * ky + kz * kz
        redundant = (kx == 0) & ((ky < 0) | ((ky == 0) & (kz < 0)))
        keep = (r2 > 0) & (r2 <= radius * radius) & ~redundant
        idx = np.flatnonzero(keep.ravel())
        pts = half_points(box, 3).reshape(-1, 3)[idx]
        return cls(idx, pts.astype(np.float64), sh.ravel()[idx], box, radius)


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


#: Largest table of fine-translation phases kept for an iteration (bytes); beyond it each chunk
#: computes the phases of its own fine translations.
FINE_PHASE_BYTES = 256 << 20


def without_ctf(ctf2: np.ndarray, multiplicity: np.ndarray | None) -> np.ndarray:
    """CTF² of a run with ``--ctf`` off: 1 where the multiplicity carries data, else 0 (ones without one)."""
    if multiplicity is None:
        return np.ones_like(ctf2)
    return (multiplicity > MULTIPLICITY_THRESHOLD).astype(ctf2.dtype)


@dataclass
class ParticleBatch:
    """The Fourier-space data of P particles, shifted by their current offsets.

    Attributes
    ----------
    data : (P, N, N, N//2+1) complex -- CTF-premultiplied half transforms.
    ctf2 : (P, N, N, N//2+1) real -- CTF² sums.
    multiplicity : (P, N, N, N//2+1) real -- multiplicities (ones for data without them).
    """

    data: np.ndarray
    ctf2: np.ndarray
    multiplicity: np.ndarray

    @classmethod
    def of(cls, data: np.ndarray, ctf2: np.ndarray, multiplicity: np.ndarray | None) -> "ParticleBatch":
        """A batch; ``multiplicity`` None stands for ones."""
        mult = np.ones(ctf2.shape, dtype=ctf2.dtype) if multiplicity is None else multiplicity
        return cls(data, ctf2, mult)

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def box(self) -> int:
        """Box size N (pixels)."""
        return self.data.shape[1]

    @property
    def complex_dtype(self) -> type:
        return np.complex64 if self.data.dtype == np.complex64 else np.complex128

    @property
    def real_dtype(self) -> type:
        return np.float32 if self.complex_dtype == np.complex64 else np.float64

    def part(self, particles: slice) -> "ParticleBatch":
        """The particles ``particles`` of this batch (views)."""
        return ParticleBatch(self.data[particles], self.ctf2[particles], self.multiplicity[particles])

    def at(self, selection: "FourierSelection") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, W, M)``: data, CTF² and multiplicity at the selected points, each ``(P, K)``."""
        return _gather(self.data, selection), _gather(self.ctf2, selection), _gather(self.multiplicity, selection)


@dataclass(frozen=True)
class EStepSettings:
    """What every batch of an iteration and half-set is scored with, besides its data and priors.

    Attributes
    ----------
    pixel_size_A : pixel size (Å).
    coarse_radius, fine_radius : Fourier radii (pixels) of the coarse and fine passes (coarse and
        current image size / 2).
    sigma_offset_A : width of the translation prior (Å).
    adaptive_fraction : RELION's significance fraction (0.999).
    firstiter_cc : score by normalised cross-correlation and keep only the best sample (RELION's
        ``--firstiter_cc`` first iteration).
    max_significant : at most this many significant coarse samples per particle go to the fine
        pass (RELION's ``--maxsig``; VDAM's 100 K); the smaller of this and
        :data:`MAX_SIGNIFICANT_COARSE` applies. None or <= 0: only the E-step's own bound.
    """

    pixel_size_A: float
    coarse_radius: float
    fine_radius: float
    sigma_offset_A: float
    adaptive_fraction: float = 0.999
    firstiter_cc: bool = False
    max_significant: int | None = None

    @property
    def significant_cap(self) -> int:
        """Most significant coarse samples per particle kept for the fine pass."""
        if self.max_significant is not None and self.max_significant > 0:
            return min(MAX_SIGNIFICANT_COARSE, int(self.max_significant))
        return MAX_SIGNIFICANT_COARSE


def _gather(arr: np.ndarray, sel: FourierSelection) -> np.ndarray:
    return arr.reshape(arr.shape[0], -1)[:, sel.index]


def _scoring_noise(noise: np.ndarray, firstiter_cc: bool) -> np.ndarray:
    """The noise power the scores use: 1/2 everywhere for correlations (``--firstiter_cc``)."""
    return np.full_like(noise, 0.5) if firstiter_cc else noise


# ---------------------------------------------------------------------------------------------
# stage 1: coarse pass
# ---------------------------------------------------------------------------------------------
@dataclass
class CoarsePass:
    """Scores and posterior weights of a batch's coarse samples.

    Attributes
    ----------
    grid : the coarse orientations of the iteration's HEALPix order.
    orientations : (R,) indices into ``grid`` of the orientations some particle's prior reaches.
    orientation_log_prior : (P, R) normalised log priors (-inf: out of reach).
    translations_px : (T, 3) coarse translations (pixels).
    weights : posterior weights ``(P, R, T)`` and the per-particle statistics.
    """

    grid: OrientationGrid
    orientations: np.ndarray
    orientation_log_prior: np.ndarray
    translations_px: np.ndarray
    weights: Weights


def _coarse_reference(projector: Projector, sampling: Sampling, grid: OrientationGrid, orientations: np.ndarray,
                      selection: FourierSelection, radius: float,
                      cache: IterationCache | None) -> ReferenceTerms | CachedRows:
    """Reference values of the reachable coarse ``orientations`` at the coarse points."""
    key = (sampling.healpix_order, sampling.sym, radius)
    n_grid = len(grid)
    if cache is not None and len(orientations) == n_grid:  # global search: same for all batches
        return cache.entry(cache.coarse_references, key,
                           lambda: reference_terms(projector, *grid.angles(orientations)[:3], selection.points))
    if cache is not None and n_grid * len(selection.index) <= COARSE_CACHE_POINTS:
        # searches restricted by priors (tilt prior, local searches): each coarse orientation's
        # reference values are interpolated once per iteration, when a batch first reaches it
        rows = cache.entry(cache.coarse_rows, key,
                           lambda: CoarseReferenceCache(n_grid, len(selection.index), projector.rdtype))
        return rows.fill(projector, grid, selection.points, orientations)
    return reference_terms(projector, *grid.angles(orientations)[:3], selection.points)


def coarse_pass(projector: Projector, batch: ParticleBatch, noise_power: np.ndarray, sampling: Sampling,
                prior_angles: np.ndarray, settings: EStepSettings, cache: IterationCache | None) -> CoarsePass:
    """Stage 1: every reachable coarse sample of the batch scored at the coarse radius, and weighted.

    Parameters
    ----------
    projector
        Projector of the half-set's current reference.
    batch
        The particles.
    noise_power
        ``(N//2+1,)`` noise power per shell, floored above 0.
    sampling
        Coarse sampling of this iteration.
    prior_angles
        ``(P, 3)`` centres of the angular priors: rot, tilt, psi (degrees).
    settings
        Radii, priors and significance of the iteration.
    cache
        The iteration's cache (None: nothing kept).
    """
    rdt = batch.real_dtype
    N = batch.box
    selection = FourierSelection.make(N, settings.coarse_radius)
    X, W, M = batch.at(selection)
    noise = noise_power[selection.shell].astype(rdt)
    grid = sampling.grid()
    orientations, log_prior = batch_orientation_prior(sampling, grid, *prior_angles.T)
    reference = _coarse_reference(projector, sampling, grid, orientations, selection, settings.coarse_radius, cache)
    shifts = sampling.translations_px(settings.pixel_size_A)
    log_translation = log_translation_prior(shifts, settings.sigma_offset_A, settings.pixel_size_A)

    def make_phases() -> np.ndarray:
        return phase_factors(selection.points.astype(rdt), shifts.astype(rdt), N)

    if cache is None:
        phases = make_phases()
    else:
        phases = cache.entry(cache.coarse_phases, (N, settings.coarse_radius, shifts.tobytes(), np.dtype(rdt).str),
                             make_phases)
    terms = particle_terms(X, W, M, _scoring_noise(noise, settings.firstiter_cc), MULTIPLICITY_THRESHOLD)
    diff2 = np.empty((len(batch), len(orientations), len(shifts)))
    translated = translated_terms(terms, phases)                       # formed once per batch
    for s in range(0, len(orientations), ROTATION_CHUNK):
        chunk = slice(s, s + ROTATION_CHUNK)
        squared_differences(terms, reference.rows(chunk), phases, lhs=translated, out=diff2[:, chunk])
    del translated
    if settings.firstiter_cc:
        diff2 = _cc_scores(terms, reference.power, diff2)
    diff2[~np.isfinite(log_prior)] = np.inf
    if settings.firstiter_cc:
        # RELION's --firstiter_cc picks the best correlation: the priors only exclude samples, they
        # do not weigh correlations (a Gaussian offset prior would outweigh any correlation
        # difference and pin the translations at zero)
        weights = weights_from_diff2(diff2, np.where(np.isfinite(log_prior), 0.0, -np.inf), None,
                                     adaptive_fraction=1.0, max_significant=1)
    else:
        weights = weights_from_diff2(diff2, log_prior, log_translation, adaptive_fraction=settings.adaptive_fraction,
                                     max_significant=settings.significant_cap)
    return CoarsePass(grid, orientations, log_prior, shifts, weights)


# ---------------------------------------------------------------------------------------------
# stage 2: significant samples
# ---------------------------------------------------------------------------------------------
@dataclass
class SignificantSamples:
    """The coarse samples that kept weight, whose oversampled children the fine pass scores.

    Attributes
    ----------
    pairs : (P, R, T) bool -- significant coarse (orientation, translation) samples.
    orientations : (P, R) bool -- coarse orientations with some significant translation.
    translations : (P, T) bool -- coarse translations with some significant orientation.
    """

    pairs: np.ndarray
    orientations: np.ndarray
    translations: np.ndarray

    def part(self, particles: slice) -> "SignificantSamples":
        """The samples of ``particles``."""
        return SignificantSamples(self.pairs[particles], self.orientations[particles], self.translations[particles])


def significant_samples(coarse: CoarsePass) -> SignificantSamples:
    """Stage 2: the coarse samples with non-zero posterior weight (cumulative 0.999, capped)."""
    pairs = coarse.weights.w > 0
    return SignificantSamples(pairs, pairs.any(axis=2), pairs.any(axis=1))


def _fine_chunks(significant: SignificantSamples, n_points: int) -> list[slice]:
    """Consecutive particles whose fine pass fits :data:`FINE_BUDGET` together."""
    per_particle = (significant.orientations.sum(axis=1) + significant.translations.sum(axis=1)) * 8 * n_points
    P = len(per_particle)
    out, start = [], 0
    while start < P:
        stop = start + 1
        while stop < P and per_particle[start:stop + 1].max() * (stop + 1 - start) <= FINE_BUDGET:
            stop += 1
        out.append(slice(start, stop))
        start = stop
    return out


def _fine_references(projector: Projector, sampling: Sampling, coarse: CoarsePass, significant: SignificantSamples,
                     selection: FourierSelection, cache: IterationCache | None) -> FineReferenceCache | None:
    """The iteration's fine reference values, filled for this batch's significant orientations (None: not kept)."""
    grid = coarse.grid
    n_child = oversampled_children(grid.pixel[:1], grid.psi[:1], sampling.healpix_order, sampling.oversampling,
                                   psi_step(sampling.healpix_order))[0].shape[-1]
    if cache is None or len(grid) * n_child * len(selection.index) > FINE_CACHE_POINTS:
        return None
    # the fine orientations are children of the coarse grid, shared by the particles (all of
    # them in a global search; neighbourhoods of their priors otherwise): each one's
    # reference values are interpolated once per iteration, when first needed
    key = (sampling.healpix_order, sampling.oversampling, sampling.sym, selection.radius)
    fine = cache.entry(cache.fine_references, key,
                       lambda: FineReferenceCache(len(grid), len(selection.index), projector.rdtype, n_child))
    fine.fill(projector, sampling, grid, selection.points,
              coarse.orientations[np.nonzero(significant.orientations)[1]])
    return fine


def _fine_phase_table(shifts_px: np.ndarray, sampling: Sampling, selection: FourierSelection, pixel_size_A: float,
                      N: int, rdt: type, cdt: type, cache: IterationCache | None) -> np.ndarray | None:
    """``φ_t(k)`` of every fine translation (row ``coarse · children + child``) at the fine points.

    The fine translations are the oversampled children of the coarse grid, the same for every
    particle; their phases are computed once per iteration (kept in ``cache``) instead of once
    per particle and fine-pass chunk. None when the table would exceed :data:`FINE_PHASE_BYTES`.
    """
    ft = oversampled_translations(shifts_px, sampling.offset_step_A, pixel_size_A, sampling.oversampling)
    ft = ft.reshape(-1, ft.shape[-1])
    if cache is None or len(ft) * len(selection.index) * np.dtype(cdt).itemsize > FINE_PHASE_BYTES:
        return None
    return cache.entry(cache.fine_phases, (N, len(selection.index), ft.tobytes(), np.dtype(cdt).str),
                       lambda: phase_factors(selection.points.astype(rdt), ft.astype(rdt), N).astype(cdt, copy=False))


# ---------------------------------------------------------------------------------------------
# stage 3: fine pass
# ---------------------------------------------------------------------------------------------
@dataclass
class FinePass:
    """Scores and posterior weights of the oversampled children of a few particles' significant samples.

    ``Rf`` fine orientations and ``Tf`` fine translations per particle (padded to the largest
    particle's; padding excluded from the weights); ``K`` fine Fourier points.

    Attributes
    ----------
    rot, tilt, psi : (P, Rf) fine orientations (degrees).
    rotations : (P, Rf, 3, 3) their matrices.
    orientation_ids : (P, Rf) ids ``coarse · children + child`` (rows of the fine reference cache).
    translations_px : (P, Tf, 3) fine translations (pixels).
    reference_stacked : (P, Rf, 2K) ``[Re V, Im V]`` of the fine orientations.
    reference_power : (P, Rf, K) ``|V|²``.
    phases : (P, Tf, K) phases of the fine translations.
    weights : posterior weights ``(P, Rf, Tf)`` and the per-particle statistics.
    """

    rot: np.ndarray
    tilt: np.ndarray
    psi: np.ndarray
    rotations: np.ndarray
    orientation_ids: np.ndarray
    translations_px: np.ndarray
    reference_stacked: np.ndarray
    reference_power: np.ndarray
    phases: np.ndarray
    weights: Weights

    def best_poses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(rot, tilt, psi, shift_px)`` of each particle's best fine sample."""
        best_r, best_t = np.divmod(self.weights.best, self.translations_px.shape[1])
        p = np.arange(len(best_r))
        return self.rot[p, best_r], self.tilt[p, best_r], self.psi[p, best_r], self.translations_px[p, best_t]


def fine_pass(projector: Projector, X: np.ndarray, W: np.ndarray, M: np.ndarray, noise: np.ndarray,
              sampling: Sampling, coarse: CoarsePass, significant: SignificantSamples, particles: slice,
              selection: FourierSelection, settings: EStepSettings, fine_references: FineReferenceCache | None,
              fine_phases: np.ndarray | None) -> FinePass:
    """Stage 3: the oversampled children of the significant coarse samples of ``particles``, scored and weighted.

    Parameters
    ----------
    X, W, M
        ``(P, K)`` data, CTF² and multiplicity of the particles at the fine points.
    noise
        ``(K,)`` noise power at the fine points.
    coarse, significant
        Stages 1 and 2 of the whole batch; ``particles`` selects this chunk's particles.
    selection
        The fine points.
    fine_references, fine_phases
        The iteration's fine reference values and fine-translation phases (None: computed here).
    """
    N = selection.box
    rdt = noise.dtype.type
    cdt = np.complex64 if rdt == np.float32 else np.complex128
    pairs = significant.pairs[particles]
    P = pairs.shape[0]
    orientations = coarse.orientations
    n_orient = significant.orientations[particles].sum(axis=1)
    n_trans = significant.translations[particles].sum(axis=1)
    # padded per-particle lists of significant coarse orientations / translations (index -1 = none)
    orient_list = _padded_indices(significant.orientations[particles], int(n_orient.max()))   # (P, Ro)
    trans_list = _padded_indices(significant.translations[particles], int(n_trans.max()))     # (P, To)
    Ro, To = orient_list.shape[1], trans_list.shape[1]
    o = sampling.oversampling
    _, _, psi_coarse, pixel_coarse = coarse.grid.angles(orientations[np.maximum(orient_list, 0)])
    frot, ftilt, fpsi = oversampled_children(pixel_coarse, psi_coarse, sampling.healpix_order, o,
                                             psi_step(sampling.healpix_order))   # (P, Ro, 8)
    n_child_r = frot.shape[-1]
    fine_shifts = oversampled_translations(coarse.translations_px, sampling.offset_step_A,
                                           settings.pixel_size_A, o)               # (Tc, 8, 3)
    n_child_t = fine_shifts.shape[1]
    fshift = fine_shifts[np.maximum(trans_list, 0)]                                # (P, To, 8, 3)
    # which fine (r, t) pairs derive from a significant coarse pair
    pair_ok = np.take_along_axis(
        np.take_along_axis(pairs, np.maximum(orient_list, 0)[:, :, None], axis=1),
        np.maximum(trans_list, 0)[:, None, :], axis=2)
    pair_ok &= (orient_list >= 0)[:, :, None] & (trans_list >= 0)[:, None, :]     # (P, Ro, To)
    Rf, Tf = Ro * n_child_r, To * n_child_t
    frot, ftilt, fpsi = (a.reshape(P, Rf) for a in (frot, ftilt, fpsi))
    fshift = fshift.reshape(P, Tf, 3)
    valid = np.repeat(np.repeat(pair_ok, n_child_r, axis=1), n_child_t, axis=2)   # (P, Rf, Tf)
    # priors of the fine samples: their coarse parent's orientation prior, their own offset prior
    parent_prior = np.take_along_axis(coarse.orientation_log_prior[particles], np.maximum(orient_list, 0), axis=1)
    log_prior = np.repeat(parent_prior, n_child_r, axis=1)
    log_translation = log_translation_prior(fshift, settings.sigma_offset_A, settings.pixel_size_A)

    rotations = euler_to_matrix(frot, ftilt, fpsi)                                 # (P, Rf, 3, 3)
    # padding entries (-1) read the particle's first significant orientation: a filled cache row
    # (excluded from the weights below; an unfilled row holds whatever memory it was given)
    orient_safe = np.where(orient_list >= 0, orient_list, orient_list[:, :1])
    fine_ids = (orientations[orient_safe][:, :, None] * n_child_r + np.arange(n_child_r)).reshape(P, Rf)
    if fine_references is not None:   # rows of the iteration's fine reference values
        stacked = np.take(fine_references.stacked, fine_ids, axis=0)              # (P, Rf, 2K): [Re V, Im V]
        power = np.take(fine_references.power, fine_ids, axis=0)                  # (P, Rf, K): |V|²
    else:
        V = projector.sample(rotations.reshape(-1, 3, 3), selection.points).reshape(P, Rf, -1)
        stacked = np.concatenate([V.real, V.imag], axis=-1)                       # (P, Rf, 2K)
        power = V.real ** 2 + V.imag ** 2
        del V
    # phases of the fine translations: rows (coarse translation · children + child) of the table
    fine_t = (np.maximum(trans_list, 0)[:, :, None] * n_child_t + np.arange(n_child_t)).reshape(P, Tf)
    if fine_phases is None:   # no iteration table: this chunk's distinct fine translations only
        unique_t, inverse_t = np.unique(fine_t, return_inverse=True)
        rows = phase_factors(selection.points.astype(rdt), fine_shifts.reshape(-1, 3)[unique_t].astype(rdt),
                             N).astype(cdt, copy=False)
        phases = np.take(rows, inverse_t.reshape(P, Tf), axis=0)                  # (P, Tf, K)
    else:
        phases = np.take(fine_phases, fine_t, axis=0)                             # (P, Tf, K)
    terms = particle_terms(X, W, M, _scoring_noise(noise, settings.firstiter_cc), MULTIPLICITY_THRESHOLD)
    diff2 = _fine_scores(terms, stacked, power, phases, pair_ok, n_child_t, n_child_r, settings.firstiter_cc)
    log_prior = np.where(np.isfinite(log_prior), log_prior, -np.inf)
    diff2 = np.where(valid & np.isfinite(log_prior)[:, :, None], diff2, np.inf)
    if settings.firstiter_cc:   # the best correlation, priors only excluding (as the coarse pass)
        weights = weights_from_diff2(diff2, np.where(np.isfinite(log_prior), 0.0, -np.inf), None,
                                     adaptive_fraction=1.0, max_significant=1)
    else:
        weights = weights_from_diff2(diff2, log_prior, log_translation, adaptive_fraction=settings.adaptive_fraction)
    return FinePass(frot, ftilt, fpsi, rotations, fine_ids, fshift, stacked, power, phases, weights)


def _fine_scores(terms: ParticleTerms, stacked: np.ndarray, power: np.ndarray, phases: np.ndarray,
                 pair_ok: np.ndarray, n_child_t: int, n_child_r: int, firstiter_cc: bool) -> np.ndarray:
    """``diff2`` ``(P, Rf, Tf)`` of the fine samples (negative correlations with ``firstiter_cc``)."""
    power_term = gemm(power, terms.a[:, :, None].astype(power.dtype))[..., 0]     # (P, Rf): Σ_k a |V|²
    b_phased = terms.b[:, None, :] * phases                                        # (P, Tf, K)
    lhs = np.concatenate([b_phased.real, b_phased.imag], axis=-1)                  # (P, Tf, 2K)
    cross = _fine_products(lhs, stacked, pair_ok, n_child_t, n_child_r)            # (P, Tf, Rf)
    diff2 = power_term[:, :, None] - 2.0 * cross.transpose(0, 2, 1) + terms.c[:, None, None]
    if firstiter_cc:
        norm_v = np.sqrt(np.maximum(power_term, 1e-30))
        norm_x = np.sqrt(np.maximum(terms.c, 1e-30))
        diff2 = -cross.transpose(0, 2, 1) / (norm_v[:, :, None] * norm_x[:, None, None])
    return diff2


# ---------------------------------------------------------------------------------------------
# stage 4: M-step sums
# ---------------------------------------------------------------------------------------------
@dataclass
class MStepSums:
    """The noise power sums of a few particles (their data went to the back-projector).

    Attributes
    ----------
    sigma2_num, sigma2_den : (N//2+1,) per shell: Σ w |W V − X φ|² and 2 Σ M.
    """

    sigma2_num: np.ndarray
    sigma2_den: np.ndarray


def mstep_sums(fine: FinePass, X: np.ndarray, W: np.ndarray, M: np.ndarray, noise: np.ndarray,
               selection: FourierSelection, backprojector: BackProjector | None,
               rotation_sums: RotationSums | None) -> MStepSums:
    """Stage 4: back-project the translation-weighted data and CTF², and sum the noise power per shell.

    Over the fine orientations that kept some weight. ``rotation_sums`` (the iteration cache's)
    defers the back-projection of each distinct orientation to :meth:`IterationCache.flush`;
    None inserts into ``backprojector`` at once; ``backprojector`` None sums the noise power only.
    """
    P, K = X.shape
    cdt = fine.phases.dtype.type
    rdt = noise.dtype.type
    inv_noise = np.where(M > MULTIPLICITY_THRESHOLD, 1.0 / noise, 0.0).astype(rdt)
    w_all = fine.weights.w
    kept = w_all.sum(axis=2) > 0                                                   # (P, Rf)
    kept_list = _padded_indices(kept, max(int(kept.sum(axis=1).max()), 1))        # (P, Rk), -1 = padding
    kept_rows = np.maximum(kept_list, 0)
    w = _take_rows(w_all, kept_rows) * (kept_list >= 0)[:, :, None]               # (P, Rk, Tf)
    kept_stacked = _take_rows(fine.reference_stacked, kept_rows)                   # (P, Rk, 2K)
    conj_v = np.empty(kept_stacked.shape[:2] + (K,), dtype=cdt)                    # (P, Rk, K): conj(V)
    conj_v.real = kept_stacked[..., :K]
    np.negative(kept_stacked[..., K:], out=conj_v.imag)
    del kept_stacked
    power = _take_rows(fine.reference_power, kept_rows)                            # (P, Rk, K)
    Y = translation_sums(w, fine.phases)                                           # (P, Rk, K): Σ_t w φ_t
    w_rot = w.sum(axis=2)                                                          # (P, Rk)
    # noise power per shell: Σ_rt w |W V - X φ|² = W² Σ_r wr |V|² - 2 Re(W X Σ_r conj(V) Y) + |X|²
    valid_k = M > MULTIPLICITY_THRESHOLD
    U1 = np.einsum("pr,prk->pk", w_rot, power)
    U2 = np.einsum("prk,prk->pk", conj_v, Y)
    del conj_v, power
    if backprojector is not None:
        # samples that share a fine orientation (same coarse parent and child) are summed in the
        # particle frame first, so each distinct orientation is back-projected once: a sparse
        # (distinct orientations × kept samples) sum of the samples' data Y X / sigma2
        particle, slot = np.nonzero(kept_list >= 0)                                # each kept sample
        fine_row = kept_rows[particle, slot]
        uniq, first, inverse = np.unique(fine.orientation_ids[particle, fine_row], return_index=True,
                                         return_inverse=True)
        Y *= (X * inv_noise)[:, None, :]                                           # in place: Y X / sigma2
        group = scipy.sparse.csr_matrix((np.ones(len(particle), dtype=cdt), (inverse, particle * Y.shape[1] + slot)),
                                        shape=(len(uniq), Y.shape[0] * Y.shape[1]))
        values = group @ Y.reshape(-1, K)                                          # (U, K)
        per_particle = np.zeros((len(uniq), P), dtype=rdt)                         # Σ w_rot of each orientation, by particle
        np.add.at(per_particle, (inverse, particle), w_rot[particle, slot])
        weights = per_particle @ (W * inv_noise)                                   # (U, K)
        rotations = fine.rotations[particle[first], fine_row[first]]
        if rotation_sums is not None:
            rotation_sums.add(uniq, rotations, values, weights)
        else:
            backprojector.insert(rotations, values, weights, selection.points)
    resid = W ** 2 * U1 - 2.0 * np.real(W * X * U2) + (X.real ** 2 + X.imag ** 2)
    nsh = selection.box // 2 + 1
    num = np.bincount(np.broadcast_to(selection.shell, resid.shape)[valid_k], weights=resid[valid_k],
                      minlength=nsh)[:nsh]
    den = 2.0 * np.bincount(np.broadcast_to(selection.shell, M.shape)[valid_k], weights=M[valid_k],
                            minlength=nsh)[:nsh]
    return MStepSums(num, den)


# ---------------------------------------------------------------------------------------------
# the four stages of one batch
# ---------------------------------------------------------------------------------------------
def expectation_batch(projector: Projector, batch: ParticleBatch, sigma2: np.ndarray, sampling: Sampling,
                      prior_angles: np.ndarray, settings: EStepSettings, *,
                      backprojector: BackProjector | None = None,
                      cache: IterationCache | None = None) -> BatchResult:
    """Score, weight and accumulate one batch of particles (the four stages).

    Parameters
    ----------
    projector
        Projector of the half-set's current reference.
    batch
        The particles' transforms (already shifted by their current offsets), CTF² sums and
        multiplicities.
    sigma2
        ``(N//2+1,)`` noise power per shell.
    sampling
        Coarse sampling of this iteration.
    prior_angles
        ``(P, 3)`` current (or prior) rot, tilt, psi (degrees): centres of the angular priors.
    settings
        Radii, translation prior, significance (:class:`EStepSettings`).
    backprojector
        Where the weighted sums go (None: E-step only).
    cache
        The iteration's :class:`IterationCache`, reused across the batches of one iteration and
        half-set (None: nothing kept). With a cache and a back-projector the sums of each fine
        orientation are deferred: **call** ``cache.flush()`` after the last batch.
    """
    noise_power = np.maximum(np.asarray(sigma2, dtype=np.float64), 1e-30)
    rdt, cdt = batch.real_dtype, batch.complex_dtype
    coarse = coarse_pass(projector, batch, noise_power, sampling, prior_angles, settings, cache)
    significant = significant_samples(coarse)
    selection = FourierSelection.make(batch.box, settings.fine_radius)
    fine_references = _fine_references(projector, sampling, coarse, significant, selection, cache)
    fine_phases = _fine_phase_table(coarse.translations_px, sampling, selection, settings.pixel_size_A, batch.box,
                                    rdt, cdt, cache)
    noise = noise_power[selection.shell].astype(rdt)
    rotation_sums = None if cache is None else cache.rotation_sums_for(backprojector, selection, len(coarse.grid),
                                                                       cdt, rdt)
    results = []
    for particles in _fine_chunks(significant, len(selection.index)):
        X, W, M = batch.part(particles).at(selection)
        fine = fine_pass(projector, X, W, M, noise, sampling, coarse, significant, particles, selection, settings,
                         fine_references, fine_phases)
        rot, tilt, psi, shift = fine.best_poses()
        weights = fine.weights
        sums = mstep_sums(fine, X, W, M, noise, selection, backprojector, rotation_sums)
        del fine
        results.append(BatchResult(rot=rot, tilt=tilt, psi=psi, shift_px=shift, pmax=np.asarray(weights.pmax),
                                   n_significant=np.asarray(weights.n_significant),
                                   log_likelihood=np.asarray(weights.log_likelihood),
                                   sigma2_num=sums.sigma2_num, sigma2_den=sums.sigma2_den))
    return BatchResult(
        rot=np.concatenate([r.rot for r in results]), tilt=np.concatenate([r.tilt for r in results]),
        psi=np.concatenate([r.psi for r in results]), shift_px=np.concatenate([r.shift_px for r in results]),
        pmax=np.concatenate([r.pmax for r in results]),
        n_significant=np.concatenate([r.n_significant for r in results]),
        log_likelihood=np.concatenate([r.log_likelihood for r in results]),
        sigma2_num=sum(r.sigma2_num for r in results), sigma2_den=sum(r.sigma2_den for r in results),
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


def _cc_scores(terms: ParticleTerms, power: np.ndarray, diff2: np.ndarray) -> np.ndarray:
    """Negative normalised cross-correlation in the place of diff2 (``--firstiter_cc``).

    With ``sigma2 = 1/2`` the terms are ``a = W²/M``, ``b = W X/M``, ``c = Σ|X|²/M``; the
    correlation of ``W V`` with ``X φ_t`` is ``B / sqrt(A c)`` and ``B = (A + c - diff2) / 2``.
    """
    A = terms.a @ power.T                                              # (P, R)
    B = 0.5 * (A[:, :, None] + terms.c[:, None, None] - diff2)
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
