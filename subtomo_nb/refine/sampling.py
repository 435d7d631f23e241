"""Orientation and translation sampling of one E-step, with RELION's priors, batched.

A :class:`Sampling` holds the state RELION keeps in ``HealpixSampling`` and the auto-sampling
counters change: HEALPix order (coarse), psi step, offset range/step (Å), oversampling order,
symmetry, and the angular prior widths of local searches (relion-conventions.md §6.9–§6.12).

Priors are evaluated for a whole batch of particles in one vectorised call, and the batch is then
scored on the union of the orientations any of its particles can reach, so a batch always runs
as matrix products, global or local. RELION's priors are products of a direction factor (tilt
prior, local searches) and a psi factor, so :func:`batch_orientation_prior` evaluates them on the
grid's directions and psi angles separately (:class:`OrientationGrid`) and forms the joint prior
only on the reachable orientations: a local search at HEALPix order 7 (25 million orientations in
C6) needs memory for its neighbourhoods, not for the whole grid. :func:`log_orientation_prior` is
the same prior on explicit orientations (dense; tests and small grids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from subtomo_nb.backend import backend_of
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.healpix import (
    angular_step,
    direction_vectors,
    orientation_grid,
    psi_angles,
    psi_step,
    sampling_directions,
)
from subtomo_nb.geometry.symmetry import symmetry_pairs
from subtomo_nb.geometry.translations import translation_grid

#: Priors are cut at this many sigma (RELION's ``sigma_cutoff``).
SIGMA_CUTOFF = 3.0


@dataclass(frozen=True)
class Sampling:
    """One iteration's sampling.

    Attributes
    ----------
    healpix_order : int -- coarse HEALPix order (RELION's ``--healpix_order``).
    offset_range_A, offset_step_A : float -- coarse translation range and step (Å).
    sym : str -- point group whose asymmetric unit the directions cover.
    oversampling : int -- adaptive oversampling order (1: 8 fine orientations per coarse one).
    sigma_rot, sigma_tilt, sigma_psi : float -- prior widths (degrees); 0 = no prior on that angle.
    """

    healpix_order: int = 2
    offset_range_A: float = 5.0
    offset_step_A: float = 2.0
    sym: str = "C1"
    oversampling: int = 1
    sigma_rot: float = 0.0
    sigma_tilt: float = 0.0
    sigma_psi: float = 0.0

    @property
    def coarse_step(self) -> float:
        """Coarse angular step (degrees)."""
        return angular_step(self.healpix_order)

    @property
    def fine_step(self) -> float:
        """Fine angular step after oversampling (degrees)."""
        return angular_step(self.healpix_order, self.oversampling)

    @property
    def is_local(self) -> bool:
        """True when a prior restricts the directions around the current ones (local search)."""
        return self.sigma_rot > 0 and self.sigma_tilt > 0

    def with_(self, **changes: float) -> "Sampling":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def coarse_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All coarse orientations ``(rot, tilt, psi, pixel)`` (degrees; NEST pixel per orientation)."""
        rot, tilt, psi = orientation_grid(self.healpix_order, self.sym)
        _, _, pix = sampling_directions(self.healpix_order, self.sym)
        npsi = len(psi) // len(pix)
        return rot, tilt, psi, np.repeat(pix, npsi)

    def grid(self) -> "OrientationGrid":
        """The coarse orientations as directions × psi angles (never expanded whole)."""
        return _orientation_grid(int(self.healpix_order), self.sym)

    def translations_px(self, pixel_size_A: float) -> np.ndarray:
        """Coarse translations ``(T, 3)`` in pixels (sphere of radius offset_range)."""
        return translation_grid(self.offset_range_A, self.offset_step_A, pixel_size_A, dim=3)


@dataclass(frozen=True, eq=False)
class OrientationGrid:
    """The coarse orientations of a HEALPix order: every direction with every psi angle.

    Orientation ``r`` is direction ``r // n_psi`` with psi ``r % n_psi`` (direction-major, as
    :meth:`Sampling.coarse_grid` and RELION's ``getPositionSamplingPoint``).

    Attributes
    ----------
    rot, tilt : (D,) direction angles (degrees).
    pixel : (D,) NEST pixel of each direction.
    psi : (n_psi,) psi angles (degrees).
    """

    rot: np.ndarray
    tilt: np.ndarray
    pixel: np.ndarray
    psi: np.ndarray

    @property
    def n_psi(self) -> int:
        return len(self.psi)

    def __len__(self) -> int:
        return len(self.rot) * len(self.psi)

    def angles(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(rot, tilt, psi, pixel)`` of orientations ``idx`` (any shape)."""
        d, j = np.divmod(np.asarray(idx, dtype=np.int64), self.n_psi)
        return self.rot[d], self.tilt[d], self.psi[j], self.pixel[d]


@lru_cache(maxsize=8)
def _orientation_grid(order: int, sym: str) -> OrientationGrid:
    arrays = (*sampling_directions(order, sym), psi_angles(order))
    for a in arrays:   # shared by every caller of this (order, symmetry): read-only
        a.setflags(write=False)
    return OrientationGrid(*arrays)


def _wrap180(d: np.ndarray) -> np.ndarray:
    return (d + 180.0) % 360.0 - 180.0


def log_orientation_prior(
    sampling: Sampling,
    rot: np.ndarray,
    tilt: np.ndarray,
    psi: np.ndarray,
    prior_rot: np.ndarray,
    prior_tilt: np.ndarray,
    prior_psi: np.ndarray,
) -> np.ndarray:
    """Log prior ``(P, R)`` of orientations for each particle of a batch (−inf: not searched).

    RELION's modes (§6.12): with ``sigma_rot`` and ``sigma_tilt`` (local search) the angle between
    the direction vector and the prior's (its closest symmetry mate) is Gaussian-weighted and cut
    at 3σ; with only ``sigma_tilt`` (the tomography tilt prior) the tilt difference is (closest
    mate); with ``sigma_psi`` the wrapped psi difference is. Angles that carry no prior get a flat
    prior. Each particle's prior is normalised over the grid.

    Parameters
    ----------
    sampling
        The sampling (symmetry and sigmas).
    rot, tilt, psi
        ``(R,)`` orientations (degrees).
    prior_rot, prior_tilt, prior_psi
        ``(P,)`` prior centres (degrees).
    """
    # each orientation read as a direction (rot, tilt) and a psi
    logp = (_log_direction_prior(sampling, rot, tilt, prior_rot, prior_tilt)
            + _log_psi_prior(sampling, psi, prior_psi))
    # a particle whose prior excludes everything keeps its nearest orientation (RELION)
    empty = ~np.isfinite(logp).any(axis=1)
    if empty.any():
        Ap = euler_to_matrix(prior_rot[empty], prior_tilt[empty], prior_psi[empty])
        A = euler_to_matrix(rot, tilt, psi)
        tr = np.einsum("pij,rij->pr", Ap, A)
        logp[empty] = -np.inf
        logp[np.flatnonzero(empty), np.argmax(tr, axis=1)] = 0.0
    return _normalised(logp)


def _normalised(logp: np.ndarray) -> np.ndarray:
    """``logp`` minus each row's log-sum-exp over its finite entries (−inf entries stay −inf)."""
    finite = np.isfinite(logp)
    top = np.where(finite, logp, -np.inf).max(axis=1, keepdims=True)
    norm = np.log(np.where(finite, np.exp(logp - top), 0.0).sum(axis=1, keepdims=True)) + top
    return logp - norm


def _log_direction_prior(sampling: Sampling, rot: np.ndarray, tilt: np.ndarray, prior_rot: np.ndarray,
                         prior_tilt: np.ndarray) -> np.ndarray:
    """Unnormalised log prior ``(P, D)`` of directions (0 everywhere without a direction prior)."""
    s = sampling
    P, D = len(prior_rot), len(rot)
    if not (s.sigma_tilt > 0 or s.sigma_rot > 0):
        return np.zeros((P, D))
    L, Rm = symmetry_pairs(s.sym)
    v = direction_vectors(rot, tilt)                                       # (D, 3)
    vp = direction_vectors(prior_rot, prior_tilt)                          # (P, 3)
    mates = np.einsum("sij,skj,pk->psi", L, Rm, vp)                        # (P, S, 3): L R^T v
    if s.is_local:
        cos = np.max(mates @ v.T, axis=1)                                  # (P, D)
        ang = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        sig = max(s.sigma_rot, s.sigma_tilt)
    else:  # tilt prior only: tilt of each symmetry mate of the prior direction
        mate_tilt = np.degrees(np.arccos(np.clip(mates[..., 2], -1.0, 1.0)))  # (P, S)
        ang = np.abs(tilt[None, None, :] - mate_tilt[:, :, None]).min(axis=1)
        sig = s.sigma_tilt
    return np.where(ang <= SIGMA_CUTOFF * sig, -0.5 * (ang / sig) ** 2, -np.inf)


def _log_psi_prior(sampling: Sampling, psi: np.ndarray, prior_psi: np.ndarray) -> np.ndarray:
    """Unnormalised log prior ``(P, n_psi)`` of psi angles (0 everywhere without a psi prior)."""
    s = sampling
    if not s.sigma_psi > 0:
        return np.zeros((len(prior_psi), len(psi)))
    d = np.abs(_wrap180(psi[None, :] - prior_psi[:, None]))
    return np.where(d <= SIGMA_CUTOFF * s.sigma_psi, -0.5 * (d / s.sigma_psi) ** 2, -np.inf)


def _nearest_orientation(grid: OrientationGrid, prior_rot: float, prior_tilt: float, prior_psi: float) -> int:
    """Index of the grid orientation closest to one orientation (largest trace of Aᵀ A_r),
    evaluated a block of directions at a time."""
    Ap = euler_to_matrix(prior_rot, prior_tilt, prior_psi)
    best, best_tr = 0, -np.inf
    block = max(1, 2_000_000 // grid.n_psi)
    for d0 in range(0, len(grid.rot), block):
        idx = np.arange(d0 * grid.n_psi, min(len(grid.rot), d0 + block) * grid.n_psi)
        rot, tilt, psi, _ = grid.angles(idx)
        tr = np.einsum("ij,rij->r", Ap, euler_to_matrix(rot, tilt, psi))
        k = int(np.argmax(tr))
        if tr[k] > best_tr:
            best, best_tr = int(idx[k]), float(tr[k])
    return best


def batch_orientation_prior(sampling: Sampling, grid: OrientationGrid, prior_rot: np.ndarray,
                            prior_tilt: np.ndarray, prior_psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The orientations a batch can reach and their normalised log priors.

    The prior of :func:`log_orientation_prior`, evaluated as a direction factor ``(P, D)`` and a
    psi factor ``(P, n_psi)`` and joined only on the reachable orientations.

    Parameters
    ----------
    sampling
        The sampling (symmetry and sigmas).
    grid
        The coarse grid (:meth:`Sampling.grid`).
    prior_rot, prior_tilt, prior_psi
        ``(P,)`` prior centres (degrees).

    Returns
    -------
    ridx : (R',) sorted indices into ``grid`` that some particle of the batch can reach.
    logp : (P, R') each particle's normalised log prior of those orientations (−inf: not searched).
    """
    prior_rot, prior_tilt, prior_psi = (np.atleast_1d(np.asarray(a, dtype=np.float64))
                                        for a in (prior_rot, prior_tilt, prior_psi))
    npsi = grid.n_psi
    ld = _log_direction_prior(sampling, grid.rot, grid.tilt, prior_rot, prior_tilt)   # (P, D)
    lpsi = _log_psi_prior(sampling, grid.psi, prior_psi)                                # (P, n_psi)
    ok_d, ok_j = np.isfinite(ld), np.isfinite(lpsi)
    empty = ~(ok_d.any(axis=1) & ok_j.any(axis=1))
    d_any = np.flatnonzero(ok_d[~empty].any(axis=0))
    j_any = np.flatnonzero(ok_j[~empty].any(axis=0))
    if (~empty).any() and len(d_any) * len(j_any) <= 4 * int((ok_d.sum(axis=1) * ok_j.sum(axis=1)).max()):
        # (directions any particle reaches) × (psi any reaches) is not much more than one
        # particle's own set (global searches, a shared tilt band): take it whole
        cand = (d_any[:, None] * npsi + j_any[None, :]).ravel()
    else:  # each particle's own (directions × psi), then the union
        parts = [(np.flatnonzero(ok_d[p])[:, None] * npsi + np.flatnonzero(ok_j[p])[None, :]).ravel()
                 for p in np.flatnonzero(~empty)]
        cand = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    nearest = {int(p): _nearest_orientation(grid, prior_rot[p], prior_tilt[p], prior_psi[p])
               for p in np.flatnonzero(empty)}     # a prior that excludes everything (RELION)
    ridx = np.unique(np.concatenate([cand, np.fromiter(nearest.values(), dtype=np.int64, count=len(nearest))]))
    d, j = np.divmod(ridx, npsi)
    logp = ld[:, d] + lpsi[:, j]                                                   # (P, R')
    for p, r in nearest.items():
        logp[p] = np.where(ridx == r, 0.0, -np.inf)
    reach = np.isfinite(logp).any(axis=0)          # drop what no particle reaches
    if not reach.all():
        ridx, logp = ridx[reach], logp[:, reach]
    return ridx, _normalised(logp)


def batch_rotations(logp: np.ndarray) -> np.ndarray:
    """Indices of the orientations any particle of the batch can reach (finite prior)."""
    return np.flatnonzero(np.isfinite(logp).any(axis=0))


def log_translation_prior(shifts_px: np.ndarray, sigma_offset_A: float, pixel_size_A: float) -> np.ndarray:
    """Gaussian log prior of translations (pixels) around the current offset.

    ``shifts_px`` is ``(..., T, 3)``; the result ``(..., T)`` is normalised over the ``T`` axis.
    ``shifts_px`` on the host or a device (the result on the same backend).
    """
    be = backend_of(shifts_px)
    xp = be.xp
    shifts = shifts_px if be.name != "numpy" else np.asarray(shifts_px)
    d2 = xp.sum((shifts * pixel_size_A) ** 2, axis=-1)
    lp = -0.5 * d2 / max(sigma_offset_A, 1e-6) ** 2
    top = xp.max(lp, axis=-1, keepdims=True)
    return lp - xp.log(xp.sum(xp.exp(lp - top), axis=-1, keepdims=True)) - top


def default_psi_step(order: int) -> float:
    """RELION's psi step at a HEALPix order (degrees)."""
    return psi_step(order)


def finer_translations(offset_step_A: float, offset_range_A: float, acc_trans_A: float,
                       change_offsets_A: float, oversampling: int = 1) -> tuple[float, float]:
    """Coarse translation step and range when auto-sampling goes one HEALPix order finer (Å).

    RELION's ``updateAngularSampling`` for 3D pseudo-subtomograms (relion-conventions.md §6.11),
    everything in Å as RELION keeps offsets: step ``min(1.5 Å, 0.75 acc_trans) · 2^oversampling``
    but at least half the current step; range 3× the last rms offset change, at most 1.3× the
    current range and at least 1.5 steps; halved if above 4 steps, and then the step raised to a
    quarter of the range if still needed; the current step and range are kept when the new step
    would be coarser.

    Examples
    --------
    >>> finer_translations(21.6, 64.8, 3.0, 2.8)     # 2 px step at 10.8 Å/px: halved
    (10.8, 16.200000000000003)
    >>> finer_translations(10.8, 16.2, 40.0, 30.0)   # poor accuracy: still at most half the step
    (5.4, 21.06)
    """
    new_step = max(min(1.5, 0.75 * acc_trans_A) * 2 ** oversampling, offset_step_A / 2.0)
    new_range = min(3.0 * change_offsets_A, 1.3 * offset_range_A)
    new_range = max(new_range, 1.5 * new_step)
    if new_range > 4.0 * new_step:
        new_range /= 2.0
    if new_range > 4.0 * new_step:
        new_step = new_range / 4.0
    if new_step > offset_step_A:
        return offset_step_A, offset_range_A
    return new_step, new_range


def coarse_radius(coarse_step_deg: float, particle_diameter_A: float, pixel_size_A: float, box: int,
                  current_size: int) -> float:
    """Fourier radius (pixels) of the coarse pass: half of RELION's coarse image size (§6.8).

    A coarse angular step moves the particle's edge by ``step/360 · π · diameter``; the coarse
    pass uses the resolution ``that / 1.2``, i.e. ``coarse_size = 2 ceil(pix · box / res)``, never
    more than the current image size.

    Examples
    --------
    >>> coarse_radius(7.5, 230.0, 10.8, 32, 32)     # 12.5 Å coarse resolution: the whole box
    16.0
    >>> coarse_radius(30.0, 230.0, 10.8, 32, 32)    # 50 Å: 2 ceil(6.9) = 14
    7.0
    """
    rotated = coarse_step_deg / 360.0 * math.pi * particle_diameter_A
    coarse_size = 2 * math.ceil(pixel_size_A * box / (rotated / 1.2))
    return min(coarse_size, current_size) / 2
