"""The particles' poses and statistics, shared by auto-refine and VDAM, and the rules both drivers use.

:class:`ParticlePoses` holds what an iteration's E-step changes for each particle (angles,
origin offsets, RELION's per-particle statistics) and the tilt prior; it applies batch results,
measures how much the poses changed, writes the output table and the saved state. The small
rules around it (mask edge, particle radius, shell of a resolution, the noise update from the
E-step's sums) are functions here, so both drivers follow the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from subtomo_nb.geometry.euler import angular_distance, euler_to_matrix
from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.refine.expectation import BatchResult
from subtomo_nb.refine.sampling import Sampling, coarse_radius

__all__ = ["MASK_EDGE_PX", "particle_radius_px", "shell_of_resolution", "coarse_pass_radius", "sigma2_from_sums",
           "change_statistics", "ParticlePoses", "ANGLE_LABELS", "OFFSET_LABELS", "STATS_LABELS"]

#: Soft-edge width of the particle and solvent masks (pixels, RELION's --maskedge).
MASK_EDGE_PX = 5
#: The pose columns of a particle table.
ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
OFFSET_LABELS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
#: RELION's per-particle statistics of the last E-step.
STATS_LABELS = ("rlnLogLikeliContribution", "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples")


def particle_radius_px(particle_diameter_A: float, box: int, pixel_size_A: float) -> float:
    """Radius of the particle mask (pixels): half ``--particle_diameter`` (Å), or the box minus the edge when <= 0."""
    d = particle_diameter_A if particle_diameter_A > 0 else (box - MASK_EDGE_PX) * pixel_size_A
    return d / (2.0 * pixel_size_A)


def shell_of_resolution(resolution_A: float, box: int, pixel_size_A: float) -> int:
    """Fourier shell (pixels) of a resolution (Å): RELION's ``getPixelFromResolution``, ``ROUND(box·pixel/res)``.

    RELION's ``ROUND`` rounds halves up (``(int)(x + 0.5)`` for ``x > 0``); 0 for a resolution <= 0.
    """
    return math.floor(box * pixel_size_A / resolution_A + 0.5) if resolution_A > 0 else 0


def coarse_pass_radius(sampling: Sampling, radius_px: float, box: int, pixel_size_A: float, current_size: int) -> float:
    """Fourier radius (pixels) of the coarse pass (§6.8) for a particle of radius ``radius_px``."""
    return coarse_radius(sampling.coarse_step, 2 * radius_px * pixel_size_A, pixel_size_A, box, current_size)


def sigma2_from_sums(num: np.ndarray, den: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Noise power per shell from the E-step's sums; shells without data (or a non-positive value) keep ``previous``."""
    new = np.where(den > 0, num / np.maximum(den, 1e-30), previous)
    return np.where(new > 0, new, previous)


def change_statistics(angle_changes: np.ndarray, offset_changes_A: np.ndarray) -> tuple[float, float]:
    """RELION's changes of the hidden variables: mean angular change (°) and offset change ``sqrt(Σ d² / 2n)`` (Å)."""
    return (float(angle_changes.mean()),
            float(np.sqrt(np.sum(offset_changes_A ** 2) / (2 * len(offset_changes_A)))))


@dataclass
class ParticlePoses:
    """Every particle's pose and statistics (n particles, rows of the particle table).

    Attributes
    ----------
    angles : (n, 3) rot, tilt, psi (degrees).
    offsets_A : (n, 3) origin offsets x, y, z (Å); the data are centred by ``+offset``.
    tilt_prior : (n,) centre of the tilt prior (degrees), or None.
    stats : RELION's per-particle statistics of the last E-step (:data:`STATS_LABELS`).
    pixel_size_A : pixel size (Å).
    """

    angles: np.ndarray
    offsets_A: np.ndarray
    tilt_prior: np.ndarray | None
    stats: pd.DataFrame
    pixel_size_A: float

    @classmethod
    def from_table(cls, table: pd.DataFrame, pixel_size_A: float) -> "ParticlePoses":
        """The poses of a particle table (missing columns read as zeros; no tilt prior without its column)."""
        n = len(table)

        def column(label: str) -> np.ndarray:
            return table[label].to_numpy(np.float64) if label in table.columns else np.zeros(n)

        stats = pd.DataFrame({"rlnLogLikeliContribution": np.zeros(n), "rlnMaxValueProbDistribution": np.zeros(n),
                              "rlnNrOfSignificantSamples": np.zeros(n, dtype=np.int64)})
        return cls(angles=np.stack([column(c) for c in ANGLE_LABELS], axis=1),
                   offsets_A=np.stack([column(c) for c in OFFSET_LABELS], axis=1),
                   tilt_prior=column("rlnAngleTiltPrior") if "rlnAngleTiltPrior" in table.columns else None,
                   stats=stats, pixel_size_A=float(pixel_size_A))

    def __len__(self) -> int:
        return len(self.angles)

    @property
    def origins_px(self) -> np.ndarray:
        """``(n, 3)`` offsets in pixels (what the data are shifted by)."""
        return self.offsets_A / self.pixel_size_A

    def prior_angles(self, sampling: Sampling) -> np.ndarray:
        """Centres of the angular priors: the current angles, tilt from the tilt prior in global searches with one."""
        prior = self.angles.copy()
        if sampling.sigma_tilt > 0 and not sampling.is_local and self.tilt_prior is not None:
            prior[:, 1] = self.tilt_prior
        return prior

    def copy_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """``(angles, offsets_A)`` copies, to measure changes against after an E-step."""
        return self.angles.copy(), self.offsets_A.copy()

    def apply(self, batches: Iterable[tuple[np.ndarray, BatchResult]], num: np.ndarray, den: np.ndarray) -> None:
        """Take each batch's best poses and statistics; add its noise sums to ``num`` and ``den`` (in place)."""
        for rows, res in batches:
            self.angles[rows] = np.stack([res.rot, res.tilt, res.psi], axis=1)
            # the data were centred by +origin; the best translation t moves the centre further
            self.offsets_A[rows] = self.offsets_A[rows] + res.shift_px * self.pixel_size_A
            self.stats.loc[rows, "rlnLogLikeliContribution"] = res.log_likelihood
            self.stats.loc[rows, "rlnMaxValueProbDistribution"] = res.pmax
            self.stats.loc[rows, "rlnNrOfSignificantSamples"] = res.n_significant
            num += res.sigma2_num
            den += res.sigma2_den

    def changes(self, rows: np.ndarray, before: tuple[np.ndarray, np.ndarray],
                symmetry: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Angular (°, the smallest over the symmetry operators) and offset (Å) changes of ``rows`` since ``before``."""
        old_angles, old_offsets = before[0][rows], before[1][rows]
        A_old = euler_to_matrix(*old_angles.T)
        A_new = euler_to_matrix(*self.angles[rows].T)
        angle = np.min([angular_distance(A_new, A_old @ S.T) for S in symmetry], axis=0)
        offset = np.linalg.norm(self.offsets_A[rows] - old_offsets, axis=1)
        return angle, offset

    def particle_set(self, pset: ParticleSet, columns: Mapping[str, object]) -> ParticleSet:
        """``pset`` with the current poses, then ``columns`` (label -> value(s)), then the statistics."""
        tab = pset.particles.copy()
        for i, label in enumerate(ANGLE_LABELS):
            tab[label] = self.angles[:, i]
        for i, label in enumerate(OFFSET_LABELS):
            tab[label] = self.offsets_A[:, i]
        for label, value in columns.items():
            tab[label] = value
        for label in self.stats.columns:
            tab[label] = self.stats[label].to_numpy()
        return ParticleSet(general=pset.general, optics=pset.optics, particles=tab,
                           path=pset.path, project_dir=pset.project_dir)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a saved state (``angles``, ``offsets_A``, ``tilt_prior`` where there is one, ``stats:<label>``)."""
        out = {"angles": self.angles, "offsets_A": self.offsets_A}
        if self.tilt_prior is not None:
            out["tilt_prior"] = self.tilt_prior
        for c in self.stats.columns:
            out[f"stats:{c}"] = self.stats[c].to_numpy()
        return out

    def restore(self, arrays: Mapping[str, np.ndarray], stats_columns: Iterable[str]) -> None:
        """Take the poses and statistics of a saved state (:meth:`state_arrays`)."""
        self.angles = arrays["angles"].copy()
        self.offsets_A = arrays["offsets_A"].copy()
        self.tilt_prior = arrays["tilt_prior"].copy() if "tilt_prior" in arrays else None
        self.stats = pd.DataFrame({c: arrays[f"stats:{c}"] for c in stats_columns})
