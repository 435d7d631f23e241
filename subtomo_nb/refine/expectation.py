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

The batch's data (:class:`ParticleBatch`) are arrays of one backend (:mod:`subtomo_nb.backend`:
numpy, cupy or the strict test device) and every stage runs there: only array-API calls and the
backend's primitives (scatter-add, bincount, argpartition, kernels) touch them, and the
:class:`BatchResult` comes back as arrays of that backend (the executor downloads them). Host
metadata (Fourier selections, orientation grids and priors, translations, the oversampled
children of the coarse orientations) is computed on the host and uploaded as ``"metadata"``,
once per iteration where the :class:`IterationCache` keeps it. The numpy backend keeps a few
marked in-place and sparse fast paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

from subtomo_nb.backend import Backend, backend_of
from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.grid import freq_grid, half_points, shell_index
from subtomo_nb.fourier.projector import Projector
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
    FINE_CHILDREN_ROWS,
    CoarseReferenceCache,
    FineChildren,
    FineReferenceCache,
    IterationCache,
    RotationSums,
    n_children,
    reference_terms,
)
from subtomo_nb.refine.sampling import OrientationGrid, Sampling, batch_orientation_prior, log_translation_prior

__all__ = [
    "MULTIPLICITY_THRESHOLD", "FourierSelection", "ParticleBatch", "EStepSettings", "BatchResult", "CoarsePass",
    "SignificantSamples", "FinePass", "MStepSums", "coarse_pass", "significant_samples", "fine_pass", "mstep_sums",
    "expectation_batch", "without_ctf", "IterationCache", "CoarseReferenceCache", "FineReferenceCache",
    "CachedRows", "FineChildren", "RotationSums", "reference_terms", "ROTATION_CHUNK", "MAX_ROTATION_SUM_IDS",
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
    index : flat indices into the ``(N, N, N//2+1)`` half array (host).
    points : ``(K, 3)`` frequencies (x, y, z), Fourier pixels (host, float64).
    shell : ``(K,)`` integer shells ``round(|k|)`` (host).
    box : the box size N (pixels) the points belong to.
    radius : the largest ``|k|`` (Fourier pixels).
    device_index, device_points, device_shell : the same tables on the backend the selection was
        made for (the host arrays themselves for numpy).
    """

    index: np.ndarray
    points: np.ndarray
    shell: np.ndarray
    box: int
    radius: float
    device_index: Any = None
    device_points: Any = None
    device_shell: Any = None

    @classmethod
    def make(cls, box: int, radius: float, be: Backend | None = None) -> "FourierSelection":
        """The selection of a box and radius, its tables uploaded to ``be`` (default numpy: no copy)."""
        kx, ky, kz = (np.broadcast_to(g, (box, box, box // 2 + 1)) for g in freq_grid(box, 3))
        sh = shell_index(box, 3)
        r2 = kx * kx + ky * ky + kz * kz
        redundant = (kx == 0) & ((ky < 0) | ((ky == 0) & (kz < 0)))
        keep = (r2 > 0) & (r2 <= radius * radius) & ~redundant
        idx = np.flatnonzero(keep.ravel())
        pts = half_points(box, 3).reshape(-1, 3)[idx].astype(np.float64)
        shell = sh.ravel()[idx]
        be = be if be is not None else backend_of(idx)
        return cls(idx, pts, shell, box, radius, be.to_device(idx, "metadata"), be.to_device(pts, "metadata"),
                   be.to_device(shell, "metadata"))


def _selection(box: int, radius: float, be: Backend, cache: IterationCache | None) -> FourierSelection:
    """:meth:`FourierSelection.make`, kept (with its device tables) for the iteration by ``cache``."""
    if cache is None:
        return FourierSelection.make(box, radius, be)
    return cache.entry(cache.selections, (box, float(radius), be.name), lambda: FourierSelection.make(box, radius, be))


@dataclass
class BatchResult:
    """E-step results of one batch (P particles), arrays of the batch's backend.

    Attributes
    ----------
    rot, tilt, psi : (P,) best fine orientation (degrees).
    shift_px : (P, 3) best translation relative to the offsets the data were centred with.
    pmax, n_significant, log_likelihood : (P,) RELION's rlnMaxValueProbDistribution,
        rlnNrOfSignificantSamples, rlnLogLikeliContribution.
    sigma2_num, sigma2_den : (n_shells,) noise power sums per shell (numerator Σ w |W V − X φ|²,
        denominator 2 Σ M).
    """

    rot: Any
    tilt: Any
    psi: Any
    shift_px: Any
    pmax: Any
    n_significant: Any
    log_likelihood: Any
    sigma2_num: Any
    sigma2_den: Any

    def to_host(self, be: Backend | None = None) -> "BatchResult":
        """The result as numpy arrays (one counted ``"results"`` copy per field off the host)."""
        be = be if be is not None else backend_of(self.rot)
        return BatchResult(**{k: be.to_host(v, "results") for k, v in vars(self).items()})


#: Largest table of fine-translation phases kept for an iteration (bytes); beyond it each chunk
#: computes the phases of its own fine translations.
FINE_PHASE_BYTES = 256 << 20


def without_ctf(ctf2: Any, multiplicity: Any | None) -> Any:
    """CTF² of a run with ``--ctf`` off: 1 where the multiplicity carries data, else 0 (ones without one)."""
    xp = backend_of(ctf2).xp
    if multiplicity is None:
        return xp.ones_like(ctf2)
    return xp.astype(multiplicity > MULTIPLICITY_THRESHOLD, ctf2.dtype)


@dataclass
class ParticleBatch:
    """The Fourier-space data of P particles, shifted by their current offsets (arrays of one backend).

    Attributes
    ----------
    data : (P, N, N, N//2+1) complex -- CTF-premultiplied half transforms.
    ctf2 : (P, N, N, N//2+1) real -- CTF² sums.
    multiplicity : (P, N, N, N//2+1) real -- multiplicities (ones for data without them).
    """

    data: Any
    ctf2: Any
    multiplicity: Any

    @classmethod
    def of(cls, data: Any, ctf2: Any, multiplicity: Any | None) -> "ParticleBatch":
        """A batch; ``multiplicity`` None stands for ones."""
        mult = backend_of(ctf2).xp.ones_like(ctf2) if multiplicity is None else multiplicity
        return cls(data, ctf2, mult)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def backend(self) -> Backend:
        """The backend of the batch's arrays."""
        return backend_of(self.data)

    @property
    def box(self) -> int:
        """Box size N (pixels)."""
        return int(self.data.shape[1])

    @property
    def complex_dtype(self) -> Any:
        xp = self.backend.xp
        return xp.complex64 if self.data.dtype == xp.complex64 else xp.complex128

    @property
    def real_dtype(self) -> Any:
        xp = self.backend.xp
        return xp.float32 if self.data.dtype == xp.complex64 else xp.float64

    def part(self, particles: slice) -> "ParticleBatch":
        """The particles ``particles`` of this batch (views)."""
        return ParticleBatch(self.data[particles, ...], self.ctf2[particles, ...], self.multiplicity[particles, ...])

    def at(self, selection: "FourierSelection") -> tuple[Any, Any, Any]:
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


def _gather(arr: Any, sel: FourierSelection) -> Any:
    be = backend_of(arr)
    if be.name == "numpy":   # numpy's fancy index keeps the memory order the numpy path's sums were tuned on
        return arr.reshape(arr.shape[0], -1)[:, sel.index]
    return be.xp.take(be.xp.reshape(arr, (arr.shape[0], -1)), sel.device_index, axis=1)


def _scoring_noise(noise: Any, firstiter_cc: bool) -> Any:
    """The noise power the scores use: 1/2 everywhere for correlations (``--firstiter_cc``)."""
    return backend_of(noise).xp.full_like(noise, 0.5) if firstiter_cc else noise


def _noise_at(noise_power: Any, selection: FourierSelection, rdt: Any) -> Any:
    """``(K,)`` noise power at the selected points (device ``noise_power`` per shell)."""
    xp = backend_of(noise_power).xp
    return xp.astype(xp.take(noise_power, selection.device_shell), rdt)


def _only_where_allowed(log_prior: Any) -> Any:
    """0 where a prior allows a sample, −inf where it excludes it (``--firstiter_cc`` scores)."""
    xp = backend_of(log_prior).xp
    return xp.where(xp.isfinite(log_prior), xp.zeros_like(log_prior), -xp.inf)


# ---------------------------------------------------------------------------------------------
# stage 1: coarse pass
# ---------------------------------------------------------------------------------------------
@dataclass
class CoarsePass:
    """Scores and posterior weights of a batch's coarse samples.

    Attributes
    ----------
    grid : the coarse orientations of the iteration's HEALPix order.
    orientations : (R,) host indices into ``grid`` of the orientations some particle's prior reaches.
    orientation_log_prior : (P, R) normalised log priors (-inf: out of reach), device.
    translations_px : (T, 3) host coarse translations (pixels).
    weights : posterior weights ``(P, R, T)`` and the per-particle statistics (device).
    children : the oversampled children of the coarse orientations (device tables).
    children_entry : (R,) device int: the row of each reachable orientation in ``children``.
    device_orientations : (R,) device int: ``orientations`` on the device.
    """

    grid: OrientationGrid
    orientations: np.ndarray
    orientation_log_prior: Any
    translations_px: np.ndarray
    weights: Weights
    children: FineChildren | None = None
    children_entry: Any = None
    device_orientations: Any = None


def _coarse_reference(projector: Projector, sampling: Sampling, grid: OrientationGrid, orientations: np.ndarray,
                      selection: FourierSelection, radius: float,
                      cache: IterationCache | None) -> ReferenceTerms | CachedRows:
    """Reference values of the reachable coarse ``orientations`` at the coarse points."""
    key = (sampling.healpix_order, sampling.sym, radius)
    n_grid = len(grid)
    points = selection.device_points
    if cache is not None and len(orientations) == n_grid:  # global search: same for all batches
        return cache.entry(cache.coarse_references, key,
                           lambda: reference_terms(projector, *grid.angles(orientations)[:3], points))
    if cache is not None and n_grid * len(selection.index) <= COARSE_CACHE_POINTS:
        # searches restricted by priors (tilt prior, local searches): each coarse orientation's
        # reference values are interpolated once per iteration, when a batch first reaches it
        be = backend_of(points)
        rows = cache.entry(cache.coarse_rows, key,
                           lambda: CoarseReferenceCache(n_grid, len(selection.index), projector.rdtype, be))
        return rows.fill(projector, grid, points, orientations)
    return reference_terms(projector, *grid.angles(orientations)[:3], points)


def _children(sampling: Sampling, grid: OrientationGrid, orientations: np.ndarray, be: Backend,
              cache: IterationCache | None) -> tuple[FineChildren, Any]:
    """The oversampled children of the reachable ``orientations`` and each one's table row (device).

    The children of the whole grid are kept for the iteration where they fit
    :data:`~subtomo_nb.refine.iteration_cache.FINE_CHILDREN_ROWS`; else the batch's own are uploaded.
    """
    n_grid = len(grid)
    if cache is not None and n_grid * n_children(sampling, grid) <= FINE_CHILDREN_ROWS:
        table = cache.entry(cache.fine_children, (sampling.healpix_order, sampling.oversampling, sampling.sym, be.name),
                            lambda: FineChildren.of(sampling, grid, np.arange(n_grid), be))
        return table, be.to_device(np.asarray(orientations, dtype=np.int64), "metadata")
    table = FineChildren.of(sampling, grid, orientations, be)
    return table, be.xp.arange(len(orientations), dtype=be.xp.int64, device=be.device)


def coarse_pass(projector: Projector, batch: ParticleBatch, noise_power: Any, sampling: Sampling,
                prior_angles: np.ndarray, settings: EStepSettings, cache: IterationCache | None) -> CoarsePass:
    """Stage 1: every reachable coarse sample of the batch scored at the coarse radius, and weighted.

    Parameters
    ----------
    projector
        Projector of the half-set's current reference (on the batch's backend).
    batch
        The particles.
    noise_power
        ``(N//2+1,)`` noise power per shell, floored above 0 (on the batch's backend).
    sampling
        Coarse sampling of this iteration.
    prior_angles
        ``(P, 3)`` host centres of the angular priors: rot, tilt, psi (degrees).
    settings
        Radii, priors and significance of the iteration.
    cache
        The iteration's cache (None: nothing kept).
    """
    be = batch.backend
    xp = be.xp
    rdt = batch.real_dtype
    N = batch.box
    selection = _selection(N, settings.coarse_radius, be, cache)
    X, W, M = batch.at(selection)
    noise = _noise_at(noise_power, selection, rdt)
    grid = sampling.grid()
    orientations, log_prior_host = batch_orientation_prior(sampling, grid, *np.asarray(prior_angles).T)
    children, children_entry = _children(sampling, grid, orientations, be, cache)
    log_prior = be.to_device(log_prior_host, "metadata")
    reference = _coarse_reference(projector, sampling, grid, orientations, selection, settings.coarse_radius, cache)
    shifts = sampling.translations_px(settings.pixel_size_A)
    log_translation = be.to_device(log_translation_prior(shifts, settings.sigma_offset_A, settings.pixel_size_A),
                                   "metadata")
    np_rdt = np.float32 if rdt == xp.float32 else np.float64

    def make_phases() -> Any:
        return phase_factors(be.to_device(selection.points.astype(np_rdt), "metadata"),
                             be.to_device(shifts.astype(np_rdt), "metadata"), N)

    if cache is None:
        phases = make_phases()
    else:
        phases = cache.entry(cache.coarse_phases, (N, settings.coarse_radius, shifts.tobytes(),
                                                   np.dtype(np_rdt).str, be.name), make_phases)
    terms = particle_terms(X, W, M, _scoring_noise(noise, settings.firstiter_cc), MULTIPLICITY_THRESHOLD)
    translated = translated_terms(terms, phases)                       # formed once per batch
    R = len(orientations)
    if be.name == "numpy":   # chunks written into one array
        diff2 = np.empty((len(batch), R, len(shifts)))
        for s in range(0, R, ROTATION_CHUNK):
            chunk = slice(s, s + ROTATION_CHUNK)
            squared_differences(terms, reference.rows(chunk), phases, lhs=translated, out=diff2[:, chunk])
    else:
        diff2 = xp.concat([xp.astype(squared_differences(terms, reference.rows(slice(s, min(s + ROTATION_CHUNK, R))), phases,
                                                         lhs=translated), xp.float64)
                           for s in range(0, R, ROTATION_CHUNK)], axis=1)
    del translated
    if settings.firstiter_cc:
        diff2 = _cc_scores(terms, reference.power, diff2)
    if be.name == "numpy":
        diff2[~np.isfinite(log_prior)] = np.inf
    else:
        diff2 = xp.where(xp.isfinite(log_prior)[:, :, None], diff2, xp.inf)
    if settings.firstiter_cc:
        # RELION's --firstiter_cc picks the best correlation: the priors only exclude samples, they
        # do not weigh correlations (a Gaussian offset prior would outweigh any correlation
        # difference and pin the translations at zero)
        weights = weights_from_diff2(diff2, _only_where_allowed(log_prior), None,
                                     adaptive_fraction=1.0, max_significant=1)
    else:
        weights = weights_from_diff2(diff2, log_prior, log_translation, adaptive_fraction=settings.adaptive_fraction,
                                     max_significant=settings.significant_cap)
    return CoarsePass(grid, orientations, log_prior, shifts, weights, children, children_entry,
                      be.to_device(np.asarray(orientations, dtype=np.int64), "metadata"))


# ---------------------------------------------------------------------------------------------
# stage 2: significant samples
# ---------------------------------------------------------------------------------------------
@dataclass
class SignificantSamples:
    """The coarse samples that kept weight, whose oversampled children the fine pass scores (device).

    Attributes
    ----------
    pairs : (P, R, T) bool -- significant coarse (orientation, translation) samples.
    orientations : (P, R) bool -- coarse orientations with some significant translation.
    translations : (P, T) bool -- coarse translations with some significant orientation.
    """

    pairs: Any
    orientations: Any
    translations: Any

    def part(self, particles: slice) -> "SignificantSamples":
        """The samples of ``particles``."""
        return SignificantSamples(self.pairs[particles, ...], self.orientations[particles, ...],
                                  self.translations[particles, ...])


def significant_samples(coarse: CoarsePass) -> SignificantSamples:
    """Stage 2: the coarse samples with non-zero posterior weight (cumulative 0.999, capped)."""
    xp = backend_of(coarse.weights.w).xp
    pairs = coarse.weights.w > 0
    return SignificantSamples(pairs, xp.any(pairs, axis=2), xp.any(pairs, axis=1))


def _count(mask: Any, axis: int) -> Any:
    xp = backend_of(mask).xp
    return xp.sum(xp.astype(mask, xp.int64), axis=axis)


def _fine_chunks(significant: SignificantSamples, n_points: int) -> list[slice]:
    """Consecutive particles whose fine pass fits :data:`FINE_BUDGET` together."""
    be = backend_of(significant.orientations)
    counts = _count(significant.orientations, 1) + _count(significant.translations, 1)
    per_particle = be.to_host(counts, "metadata") * 8 * n_points     # (P,) sizes: chunking is host control flow
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
    n_child = coarse.children.n_child
    if cache is None or len(grid) * n_child * len(selection.index) > FINE_CACHE_POINTS:
        return None
    be = backend_of(significant.orientations)
    xp = be.xp
    # the fine orientations are children of the coarse grid, shared by the particles (all of
    # them in a global search; neighbourhoods of their priors otherwise): each one's
    # reference values are interpolated once per iteration, when first needed
    key = (sampling.healpix_order, sampling.oversampling, sampling.sym, selection.radius, be.name)
    fine = cache.entry(cache.fine_references, key,
                       lambda: FineReferenceCache(len(grid), len(selection.index), projector.rdtype, n_child, be))
    (sig,) = xp.nonzero(xp.any(significant.orientations, axis=0))      # reachable positions some particle kept
    fine.fill(projector, coarse.children, xp.take(coarse.children_entry, sig), xp.take(coarse.device_orientations, sig),
              selection.device_points)
    return fine


def _fine_phase_table(shifts_px: np.ndarray, sampling: Sampling, selection: FourierSelection, pixel_size_A: float,
                      N: int, rdt: Any, cdt: Any, cache: IterationCache | None) -> Any | None:
    """``φ_t(k)`` of every fine translation (row ``coarse · children + child``) at the fine points.

    The fine translations are the oversampled children of the coarse grid, the same for every
    particle; their phases are computed once per iteration (kept in ``cache``) instead of once
    per particle and fine-pass chunk. None when the table would exceed :data:`FINE_PHASE_BYTES`.
    """
    ft = oversampled_translations(shifts_px, sampling.offset_step_A, pixel_size_A, sampling.oversampling)
    ft = ft.reshape(-1, ft.shape[-1])
    be = backend_of(selection.device_points)
    xp = be.xp
    np_rdt = np.float32 if rdt == xp.float32 else np.float64
    np_cdt = np.complex64 if np_rdt == np.float32 else np.complex128
    if cache is None or len(ft) * len(selection.index) * np.dtype(np_cdt).itemsize > FINE_PHASE_BYTES:
        return None
    return cache.entry(cache.fine_phases, (N, len(selection.index), ft.tobytes(), np.dtype(np_cdt).str, be.name),
                       lambda: xp.astype(phase_factors(be.to_device(selection.points.astype(np_rdt), "metadata"),
                                                       be.to_device(ft.astype(np_rdt), "metadata"), N),
                                         cdt, copy=False))


# ---------------------------------------------------------------------------------------------
# stage 3: fine pass
# ---------------------------------------------------------------------------------------------
@dataclass
class FinePass:
    """Scores and posterior weights of the oversampled children of a few particles' significant samples.

    ``Rf`` fine orientations and ``Tf`` fine translations per particle (padded to the largest
    particle's; padding excluded from the weights); ``K`` fine Fourier points. Device arrays.

    Attributes
    ----------
    rot, tilt, psi : (P, Rf) fine orientations (degrees).
    rotations : (P, Rf, 3, 3) their matrices.
    orientation_ids : (P, Rf) ids ``coarse · children + child`` (orientation sums).
    translations_px : (P, Tf, 3) fine translations (pixels).
    reference_stacked : (P, Rf, 2K) ``[Re V, Im V]`` of the fine orientations.
    reference_power : (P, Rf, K) ``|V|²``.
    phases : (P, Tf, K) phases of the fine translations.
    weights : posterior weights ``(P, Rf, Tf)`` and the per-particle statistics.
    """

    rot: Any
    tilt: Any
    psi: Any
    rotations: Any
    orientation_ids: Any
    translations_px: Any
    reference_stacked: Any
    reference_power: Any
    phases: Any
    weights: Weights

    def best_poses(self) -> tuple[Any, Any, Any, Any]:
        """``(rot, tilt, psi, shift_px)`` of each particle's best fine sample."""
        xp = backend_of(self.rot).xp
        Tf = self.translations_px.shape[1]
        best_r = self.weights.best // Tf
        best_t = self.weights.best % Tf
        pick = (lambda a, i: xp.take_along_axis(a, i[:, None], axis=1)[:, 0])
        shift = xp.take_along_axis(self.translations_px, xp.broadcast_to(best_t[:, None, None],
                                                                         (best_t.shape[0], 1, 3)), axis=1)[:, 0, :]
        return pick(self.rot, best_r), pick(self.tilt, best_r), pick(self.psi, best_r), shift


def _take_rows(a: Any, idx: Any) -> Any:
    """``a[p, idx[p, j]]`` for ``a`` ``(P, R, ...)`` and ``idx`` ``(P, J)``: whole rows copied at once.

    The same as ``take_along_axis`` along axis 1, which indexes element by element.
    """
    xp = backend_of(a).xp
    P, R = a.shape[:2]
    flat = xp.reshape(xp.arange(P, dtype=idx.dtype, device=a.device)[:, None] * R + idx, (-1,))
    rest = tuple(a.shape[2:])
    return xp.reshape(xp.take(xp.reshape(a, (P * R,) + rest), flat, axis=0), tuple(idx.shape) + rest)


def _padded_indices(mask: Any, width: int) -> Any:
    """Per row, the indices where ``mask`` is True, left-aligned and padded with −1 to ``width``."""
    xp = backend_of(mask).xp
    order = xp.argsort(xp.astype(~mask, xp.int8), axis=1, stable=True)[:, :width]
    ok = xp.take_along_axis(mask, order, axis=1)
    return xp.where(ok, order, -1)


def _children_rows(base: Any, n_child: int) -> Any:
    """``base[..., None] · n_child + arange(n_child)`` flattened over the last two axes."""
    xp = backend_of(base).xp
    child = xp.arange(n_child, dtype=base.dtype, device=base.device)
    rows = base[..., None] * n_child + child
    return xp.reshape(rows, tuple(base.shape[:-1]) + (base.shape[-1] * n_child,))


def fine_pass(projector: Projector, X: Any, W: Any, M: Any, noise: Any,
              sampling: Sampling, coarse: CoarsePass, significant: SignificantSamples, particles: slice,
              selection: FourierSelection, settings: EStepSettings, fine_references: FineReferenceCache | None,
              fine_phases: Any | None) -> FinePass:
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
    be = backend_of(X)
    xp = be.xp
    N = selection.box
    rdt = noise.dtype
    cdt = xp.complex64 if rdt == xp.float32 else xp.complex128
    np_rdt = np.float32 if rdt == xp.float32 else np.float64
    pairs = significant.pairs[particles, ...]
    P = int(pairs.shape[0])
    sig_o, sig_t = significant.orientations[particles, ...], significant.translations[particles, ...]
    # padded per-particle lists of significant coarse orientations / translations (index -1 = none)
    orient_list = _padded_indices(sig_o, int(xp.max(_count(sig_o, 1))))     # (P, Ro)
    trans_list = _padded_indices(sig_t, int(xp.max(_count(sig_t, 1))))      # (P, To)
    Ro, To = int(orient_list.shape[1]), int(trans_list.shape[1])
    orient0, trans0 = xp.maximum(orient_list, 0), xp.maximum(trans_list, 0)
    # the children of the significant coarse orientations: rows of the uploaded children table
    children = coarse.children
    n_child_r = children.n_child
    entry = xp.reshape(xp.take(coarse.children_entry, xp.reshape(orient0, (-1,))), (P, Ro))
    child_rows = xp.reshape(_children_rows(entry, n_child_r), (-1,))          # (P·Rf,)
    Rf = Ro * n_child_r
    frot, ftilt, fpsi = (xp.reshape(xp.take(a, child_rows), (P, Rf)) for a in (children.rot, children.tilt,
                                                                               children.psi))
    rotations = xp.reshape(xp.take(children.matrices, child_rows, axis=0), (P, Rf, 3, 3))
    fine_shifts = oversampled_translations(coarse.translations_px, sampling.offset_step_A,
                                           settings.pixel_size_A, sampling.oversampling)   # (Tc, 8, 3) host
    n_child_t = int(fine_shifts.shape[1])
    fine_shifts_d = be.to_device(np.ascontiguousarray(fine_shifts.reshape(-1, 3)), "metadata")
    fine_t = _children_rows(trans0, n_child_t)                                 # (P, Tf): rows of the fine table
    Tf = To * n_child_t
    fshift = xp.reshape(xp.take(fine_shifts_d, xp.reshape(fine_t, (-1,)), axis=0), (P, Tf, 3))
    # which fine (r, t) pairs derive from a significant coarse pair
    pair_ok = xp.take_along_axis(xp.take_along_axis(pairs, orient0[:, :, None], axis=1), trans0[:, None, :], axis=2)
    pair_ok = pair_ok & (orient_list >= 0)[:, :, None] & (trans_list >= 0)[:, None, :]   # (P, Ro, To)
    valid = xp.repeat(xp.repeat(pair_ok, n_child_r, axis=1), n_child_t, axis=2)          # (P, Rf, Tf)
    # priors of the fine samples: their coarse parent's orientation prior, their own offset prior
    parent_prior = xp.take_along_axis(coarse.orientation_log_prior[particles, ...], orient0, axis=1)
    log_prior = xp.repeat(parent_prior, n_child_r, axis=1)
    log_translation = log_translation_prior(fshift, settings.sigma_offset_A, settings.pixel_size_A)

    # padding entries (-1) read the particle's first significant orientation: a filled cache row
    # (excluded from the weights below; an unfilled row holds whatever memory it was given)
    orient_safe = xp.where(orient_list >= 0, orient_list, orient_list[:, :1])
    coarse_ids = xp.reshape(xp.take(coarse.device_orientations, xp.reshape(orient_safe, (-1,))), (P, Ro))
    fine_ids = _children_rows(coarse_ids, n_child_r)                           # (P, Rf)
    if fine_references is not None:   # rows of the iteration's fine reference values
        slots = xp.reshape(xp.take(fine_references.slot, xp.reshape(coarse_ids, (-1,))), (P, Ro))
        rows = xp.reshape(_children_rows(slots, n_child_r), (-1,))
        stacked = xp.reshape(xp.take(fine_references.stacked, rows, axis=0), (P, Rf, -1))   # (P, Rf, 2K)
        power = xp.reshape(xp.take(fine_references.power, rows, axis=0), (P, Rf, -1))       # (P, Rf, K)
    else:
        V = xp.reshape(projector.sample(xp.reshape(rotations, (-1, 3, 3)), selection.device_points), (P, Rf, -1))
        re, im = xp.real(V), xp.imag(V)
        stacked = xp.concat([re, im], axis=-1)                                 # (P, Rf, 2K)
        power = re ** 2 + im ** 2
        del V, re, im
    # phases of the fine translations: rows (coarse translation · children + child) of the table
    if fine_phases is None:   # no iteration table: this chunk's distinct fine translations only
        unique_t, inverse_t = xp.unique_inverse(fine_t)
        rows = phase_factors(be.to_device(selection.points.astype(np_rdt), "metadata"),
                             xp.astype(xp.take(fine_shifts_d, unique_t, axis=0), rdt), N)
        rows = xp.astype(rows, cdt, copy=False)
        phases = xp.reshape(xp.take(rows, xp.reshape(inverse_t, (-1,)), axis=0), (P, Tf, -1))   # (P, Tf, K)
    else:
        phases = xp.reshape(xp.take(fine_phases, xp.reshape(fine_t, (-1,)), axis=0), (P, Tf, -1))
    terms = particle_terms(X, W, M, _scoring_noise(noise, settings.firstiter_cc), MULTIPLICITY_THRESHOLD)
    diff2 = _fine_scores(terms, stacked, power, phases, pair_ok, n_child_t, n_child_r, settings.firstiter_cc)
    diff2 = xp.where(valid & xp.isfinite(log_prior)[:, :, None], diff2, xp.inf)
    if settings.firstiter_cc:   # the best correlation, priors only excluding (as the coarse pass)
        weights = weights_from_diff2(diff2, _only_where_allowed(log_prior), None,
                                     adaptive_fraction=1.0, max_significant=1)
    else:
        weights = weights_from_diff2(diff2, log_prior, log_translation, adaptive_fraction=settings.adaptive_fraction)
    return FinePass(frot, ftilt, fpsi, rotations, fine_ids, fshift, stacked, power, phases, weights)


def _fine_scores(terms: ParticleTerms, stacked: Any, power: Any, phases: Any,
                 pair_ok: Any, n_child_t: int, n_child_r: int, firstiter_cc: bool) -> Any:
    """``diff2`` ``(P, Rf, Tf)`` of the fine samples (negative correlations with ``firstiter_cc``)."""
    xp = backend_of(stacked).xp
    power_term = gemm(power, xp.astype(terms.a[:, :, None], power.dtype))[..., 0]   # (P, Rf): Σ_k a |V|²
    b_phased = terms.b[:, None, :] * phases                                        # (P, Tf, K)
    lhs = xp.concat([xp.real(b_phased), xp.imag(b_phased)], axis=-1)              # (P, Tf, 2K)
    cross = _fine_products(lhs, stacked, pair_ok, n_child_t, n_child_r)            # (P, Tf, Rf)
    cross_rt = xp.permute_dims(cross, (0, 2, 1))
    if firstiter_cc:
        norm_v = xp.sqrt(xp.maximum(power_term, 1e-30))
        norm_x = xp.sqrt(xp.maximum(terms.c, 1e-30))
        return -cross_rt / (norm_v[:, :, None] * norm_x[:, None, None])
    return power_term[:, :, None] - 2.0 * cross_rt + terms.c[:, None, None]


# ---------------------------------------------------------------------------------------------
# stage 4: M-step sums
# ---------------------------------------------------------------------------------------------
@dataclass
class MStepSums:
    """The noise power sums of a few particles (their data went to the back-projector).

    Attributes
    ----------
    sigma2_num, sigma2_den : (N//2+1,) per shell: Σ w |W V − X φ|² and 2 Σ M (device, float64).
    """

    sigma2_num: Any
    sigma2_den: Any


def _conj_from_stacked(stacked: Any, K: int, cdt: Any) -> Any:
    """``conj(V)`` ``(..., K)`` from ``[Re V, Im V]`` ``(..., 2K)`` (exact)."""
    be = backend_of(stacked)
    if be.name == "numpy":   # written in place, no complex temporaries
        out = np.empty(stacked.shape[:-1] + (K,), dtype=cdt)
        out.real = stacked[..., :K]
        np.negative(stacked[..., K:], out=out.imag)
        return out
    xp = be.xp
    return xp.astype(stacked[..., :K], cdt) + xp.astype(-stacked[..., K:], cdt) * 1j


def mstep_sums(fine: FinePass, X: Any, W: Any, M: Any, noise: Any,
               selection: FourierSelection, backprojector: BackProjector | None,
               rotation_sums: RotationSums | None) -> MStepSums:
    """Stage 4: back-project the translation-weighted data and CTF², and sum the noise power per shell.

    Over the fine orientations that kept some weight. ``rotation_sums`` (the iteration cache's)
    defers the back-projection of each distinct orientation to :meth:`IterationCache.flush`;
    None inserts into ``backprojector`` at once; ``backprojector`` None sums the noise power only.
    """
    be = backend_of(X)
    xp = be.xp
    P, K = X.shape
    cdt = fine.phases.dtype
    rdt = noise.dtype
    valid_k = M > MULTIPLICITY_THRESHOLD
    inv_noise = xp.astype(xp.where(valid_k, 1.0 / noise, 0.0), rdt)
    w_all = fine.weights.w
    kept = xp.sum(w_all, axis=2) > 0                                               # (P, Rf)
    kept_list = _padded_indices(kept, max(int(xp.max(_count(kept, 1))), 1))      # (P, Rk), -1 = padding
    kept_rows = xp.maximum(kept_list, 0)
    w = _take_rows(w_all, kept_rows) * xp.astype(kept_list >= 0, w_all.dtype)[:, :, None]   # (P, Rk, Tf)
    conj_v = _conj_from_stacked(_take_rows(fine.reference_stacked, kept_rows), K, cdt)   # (P, Rk, K): conj(V)
    power = _take_rows(fine.reference_power, kept_rows)                            # (P, Rk, K)
    Y = translation_sums(w, fine.phases)                                           # (P, Rk, K): Σ_t w φ_t
    w_rot = xp.sum(w, axis=2)                                                      # (P, Rk)
    # noise power per shell: Σ_rt w |W V - X φ|² = W² Σ_r wr |V|² - 2 Re(W X Σ_r conj(V) Y) + |X|²
    if be.name == "numpy":
        U1 = np.einsum("pr,prk->pk", w_rot, power)
        U2 = np.einsum("prk,prk->pk", conj_v, Y)
    else:
        U1 = gemm(xp.astype(w_rot[:, None, :], power.dtype), power)[:, 0, :]
        U2 = xp.sum(conj_v * Y, axis=1)
    del conj_v, power
    if backprojector is not None:
        _back_project(fine, X, W, inv_noise, Y, w_rot, kept_list, kept_rows, selection, backprojector, rotation_sums)
    resid = W ** 2 * U1 - 2.0 * xp.real(W * X * U2) + (xp.real(X) ** 2 + xp.imag(X) ** 2)
    nsh = selection.box // 2 + 1
    shell = xp.broadcast_to(selection.device_shell, resid.shape)
    if be.name == "numpy":
        num = np.bincount(shell[valid_k], weights=resid[valid_k], minlength=nsh)[:nsh]
        den = 2.0 * np.bincount(shell[valid_k], weights=M[valid_k], minlength=nsh)[:nsh]
        return MStepSums(num, den)
    # invalid points counted with weight 0 (the same sums as leaving them out)
    flat = xp.reshape(shell, (-1,))
    num = be.bincount(flat, xp.reshape(xp.astype(xp.where(valid_k, resid, 0.0), xp.float64), (-1,)), nsh)
    den = 2.0 * be.bincount(flat, xp.reshape(xp.astype(xp.where(valid_k, M, 0.0), xp.float64), (-1,)), nsh)
    return MStepSums(num, den)


def _first_of_groups(inverse: Any) -> Any:
    """For group labels ``inverse`` ``(S,)`` (``0 .. U-1``, every label used), the first position of each."""
    xp = backend_of(inverse).xp
    order = xp.argsort(inverse, stable=True)
    labels = xp.take(inverse, order)
    start = xp.concat([xp.ones(1, dtype=xp.bool, device=inverse.device), labels[1:] != labels[:-1]])
    return order[start]


def _back_project(fine: FinePass, X: Any, W: Any, inv_noise: Any, Y: Any, w_rot: Any, kept_list: Any,
                  kept_rows: Any, selection: FourierSelection, backprojector: BackProjector,
                  rotation_sums: RotationSums | None) -> None:
    """The M-step's back-projection of the kept samples, one insertion per distinct fine orientation.

    Samples that share a fine orientation (same coarse parent and child) are summed in the
    particle frame first: a sparse (distinct orientations × kept samples) sum of the samples'
    data ``Y X / sigma2`` and weights ``w_rot W / sigma2``.
    """
    be = backend_of(X)
    xp = be.xp
    P, K = X.shape
    Rk = int(Y.shape[1])
    Rf = int(fine.orientation_ids.shape[1])
    cdt = Y.dtype
    rdt = inv_noise.dtype
    if be.name == "numpy":   # in place and through scipy.sparse (the same sums, fewer temporaries)
        particle, slot = np.nonzero(kept_list >= 0)                                # each kept sample
        fine_row = kept_rows[particle, slot]
        uniq, first, inverse = np.unique(fine.orientation_ids[particle, fine_row], return_index=True,
                                         return_inverse=True)
        Y *= (X * inv_noise)[:, None, :]                                           # in place: Y X / sigma2
        group = scipy.sparse.csr_matrix((np.ones(len(particle), dtype=cdt), (inverse, particle * Rk + slot)),
                                        shape=(len(uniq), P * Rk))
        values = group @ Y.reshape(-1, K)                                          # (U, K)
        per_particle = np.zeros((len(uniq), P), dtype=rdt)                         # Σ w_rot of each orientation, by particle
        np.add.at(per_particle, (inverse, particle), w_rot[particle, slot])
        weights = per_particle @ (W * inv_noise)                                   # (U, K)
        rotations = fine.rotations[particle[first], fine_row[first]]
    else:
        (sample,) = xp.nonzero(xp.reshape(kept_list >= 0, (-1,)))                 # flat p·Rk + slot
        particle = sample // Rk
        fine_flat = particle * Rf + xp.take(xp.reshape(kept_rows, (-1,)), sample)
        ids = xp.take(xp.reshape(fine.orientation_ids, (-1,)), fine_flat)
        uniq, inverse = xp.unique_inverse(ids)
        U = int(uniq.shape[0])
        first = _first_of_groups(inverse)
        data = xp.take(xp.reshape(Y * (X * xp.astype(inv_noise, cdt))[:, None, :], (P * Rk, K)), sample, axis=0)
        values = be.scatter_add(xp.zeros((U, K), dtype=cdt, device=be.device), (inverse,), data)
        per_particle = be.scatter_add(xp.zeros((U, P), dtype=rdt, device=be.device), (inverse, particle),
                                      xp.astype(xp.take(xp.reshape(w_rot, (-1,)), sample), rdt))
        weights = per_particle @ (W * inv_noise)                                   # (U, K)
        rotations = xp.take(xp.reshape(fine.rotations, (-1, 3, 3)), xp.take(fine_flat, first), axis=0)
    if rotation_sums is not None:
        rotation_sums.add(uniq, rotations, values, weights)
    else:
        backprojector.insert(rotations, values, weights, selection.device_points)


# ---------------------------------------------------------------------------------------------
# the four stages of one batch
# ---------------------------------------------------------------------------------------------
def _noise_power(sigma2: Any, be: Backend) -> Any:
    """``max(sigma2, 1e-30)`` as float64 on ``be`` (a host ``sigma2`` uploaded as metadata)."""
    if be.owns(sigma2):
        return be.xp.maximum(be.xp.astype(sigma2, be.xp.float64), 1e-30)
    return be.to_device(np.maximum(np.asarray(sigma2, dtype=np.float64), 1e-30), "metadata")


def expectation_batch(projector: Projector, batch: ParticleBatch, sigma2: Any, sampling: Sampling,
                      prior_angles: np.ndarray, settings: EStepSettings, *,
                      backprojector: BackProjector | None = None,
                      cache: IterationCache | None = None) -> BatchResult:
    """Score, weight and accumulate one batch of particles (the four stages).

    Parameters
    ----------
    projector
        Projector of the half-set's current reference (on the batch's backend).
    batch
        The particles' transforms (already shifted by their current offsets), CTF² sums and
        multiplicities: arrays of one backend; everything runs there.
    sigma2
        ``(N//2+1,)`` noise power per shell (host, or on the batch's backend).
    sampling
        Coarse sampling of this iteration.
    prior_angles
        ``(P, 3)`` host current (or prior) rot, tilt, psi (degrees): centres of the angular priors.
    settings
        Radii, translation prior, significance (:class:`EStepSettings`).
    backprojector
        Where the weighted sums go (None: E-step only), on the batch's backend.
    cache
        The iteration's :class:`IterationCache`, reused across the batches of one iteration and
        half-set (None: nothing kept). With a cache and a back-projector the sums of each fine
        orientation are deferred: **call** ``cache.flush()`` after the last batch.

    Returns
    -------
    BatchResult
        Arrays of the batch's backend (:meth:`BatchResult.to_host` brings them to the host).
    """
    be = batch.backend
    xp = be.xp
    noise_power = _noise_power(sigma2, be)
    rdt, cdt = batch.real_dtype, batch.complex_dtype
    coarse = coarse_pass(projector, batch, noise_power, sampling, prior_angles, settings, cache)
    significant = significant_samples(coarse)
    selection = _selection(batch.box, settings.fine_radius, be, cache)
    fine_references = _fine_references(projector, sampling, coarse, significant, selection, cache)
    fine_phases = _fine_phase_table(coarse.translations_px, sampling, selection, settings.pixel_size_A, batch.box,
                                    rdt, cdt, cache)
    noise = _noise_at(noise_power, selection, rdt)
    rotation_sums = None if cache is None else cache.rotation_sums_for(backprojector, selection, len(coarse.grid),
                                                                       cdt, rdt, be)
    results = []
    for particles in _fine_chunks(significant, len(selection.index)):
        X, W, M = batch.part(particles).at(selection)
        fine = fine_pass(projector, X, W, M, noise, sampling, coarse, significant, particles, selection, settings,
                         fine_references, fine_phases)
        rot, tilt, psi, shift = fine.best_poses()
        weights = fine.weights
        sums = mstep_sums(fine, X, W, M, noise, selection, backprojector, rotation_sums)
        del fine
        results.append(BatchResult(rot=rot, tilt=tilt, psi=psi, shift_px=shift, pmax=weights.pmax,
                                   n_significant=weights.n_significant, log_likelihood=weights.log_likelihood,
                                   sigma2_num=sums.sigma2_num, sigma2_den=sums.sigma2_den))
    cat = (lambda name: xp.concat([getattr(r, name) for r in results]))
    return BatchResult(
        rot=cat("rot"), tilt=cat("tilt"), psi=cat("psi"), shift_px=cat("shift_px"), pmax=cat("pmax"),
        n_significant=cat("n_significant"), log_likelihood=cat("log_likelihood"),
        sigma2_num=sum(r.sigma2_num for r in results), sigma2_den=sum(r.sigma2_den for r in results),
    )


#: Fine-pass pairs of significant coarse samples multiplied per matrix-product call.
PAIR_CHUNK = 256


def _fine_products(lhs: Any, rhs: Any, pair_ok: Any, nchild_t: int, nchild_r: int) -> Any:
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
    be = backend_of(lhs)
    xp = be.xp
    P, Rmax, Tmax = pair_ok.shape
    n_pairs = int(xp.sum(xp.astype(pair_ok, xp.int64)))
    # dense: P·Rmax·Tmax blocks of ct×cr products (compute-bound); pairs: n_pairs blocks whose
    # rows are gathered first (memory-bound), so only taken where it skips over 2/3 of the blocks
    if P * Rmax * Tmax <= 3 * n_pairs:
        return gemm(lhs, xp.permute_dims(rhs, (0, 2, 1)))
    twoK = lhs.shape[-1]
    dt = xp.result_type(lhs.dtype, rhs.dtype)
    if be.name == "numpy":   # blocks written in place
        out = np.zeros((P, Tmax, nchild_t, Rmax, nchild_r), dtype=dt)
        lhs4 = lhs.reshape(P, Tmax, nchild_t, twoK)
        rhs4 = rhs.reshape(P, Rmax, nchild_r, twoK)
        pp, rr, tt = np.nonzero(pair_ok)
        for s in range(0, n_pairs, PAIR_CHUNK):
            p, r, t = pp[s:s + PAIR_CHUNK], rr[s:s + PAIR_CHUNK], tt[s:s + PAIR_CHUNK]
            out[p, t, :, r, :] = gemm(lhs4[p, t], rhs4[p, r].transpose(0, 2, 1))   # (s, ct, cr)
        return out.reshape(P, Tmax * nchild_t, Rmax * nchild_r)
    # blocks (p, t, r) of the (P·Tmax·Rmax, ct·cr) result scattered at their (distinct) rows
    lhs_b = xp.reshape(lhs, (P * Tmax, nchild_t, twoK))
    rhs_b = xp.reshape(rhs, (P * Rmax, nchild_r, twoK))
    pp, rr, tt = xp.nonzero(pair_ok)
    blocks = xp.zeros((P * Tmax * Rmax, nchild_t * nchild_r), dtype=dt, device=be.device)
    for s in range(0, n_pairs, PAIR_CHUNK):
        e = min(s + PAIR_CHUNK, n_pairs)
        p, r, t = pp[s:e], rr[s:e], tt[s:e]
        prod = gemm(xp.take(lhs_b, p * Tmax + t, axis=0),
                    xp.permute_dims(xp.take(rhs_b, p * Rmax + r, axis=0), (0, 2, 1)))   # (s, ct, cr)
        be.scatter_add(blocks, (p * Tmax + t) * Rmax + r, xp.reshape(prod, (-1, nchild_t * nchild_r)))
    out = xp.permute_dims(xp.reshape(blocks, (P, Tmax, Rmax, nchild_t, nchild_r)), (0, 1, 3, 2, 4))
    return xp.reshape(out, (P, Tmax * nchild_t, Rmax * nchild_r))


def _cc_scores(terms: ParticleTerms, power: Any, diff2: Any) -> Any:
    """Negative normalised cross-correlation in the place of diff2 (``--firstiter_cc``).

    With ``sigma2 = 1/2`` the terms are ``a = W²/M``, ``b = W X/M``, ``c = Σ|X|²/M``; the
    correlation of ``W V`` with ``X φ_t`` is ``B / sqrt(A c)`` and ``B = (A + c - diff2) / 2``.
    """
    xp = backend_of(diff2).xp
    A = terms.a @ power.T                                              # (P, R)
    B = 0.5 * (A[:, :, None] + terms.c[:, None, None] - diff2)
    cc = B / xp.sqrt(xp.maximum(A, 1e-30)[:, :, None] * xp.maximum(terms.c, 1e-30)[:, None, None])
    return -cc
