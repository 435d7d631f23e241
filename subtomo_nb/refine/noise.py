"""RELION's initial noise estimate, shared by auto-refine and VDAM."""

from __future__ import annotations

import numpy as np

from subtomo_nb.fourier.grid import shell_index
from subtomo_nb.tasks.particle_data import particle_transforms

__all__ = ["N_SIGMA2_PARTICLES", "initial_sigma2"]

#: Particles used for the initial noise estimate (3D data, RELION).
N_SIGMA2_PARTICLES = 10


def initial_sigma2(pset, rows: np.ndarray, box: int, tomograms, dtype) -> np.ndarray:
    """RELION's initial noise estimate: per-shell power of the particles minus that of their mean, /2.

    For pseudo-subtomograms the power is normalised by the multiplicity, as the E-step's
    ``2 σ² M`` noise model (relion-conventions.md §5.3).
    """
    use = rows[:N_SIGMA2_PARTICLES]
    data, ctf2, mult = particle_transforms(pset, use, tomograms=tomograms, dtype=dtype)
    mult = np.ones(ctf2.shape) if mult is None else mult
    mean = data.mean(axis=0, keepdims=True)
    resid = np.abs(data - mean) ** 2 * (len(use) / max(len(use) - 1, 1))
    sh = np.broadcast_to(shell_index(box), data.shape)
    nsh = box // 2 + 1
    ok = mult > 0.01
    num = np.bincount(sh[ok], weights=resid[ok], minlength=nsh)[:nsh]
    den = 2.0 * np.bincount(sh[ok], weights=mult[ok], minlength=nsh)[:nsh]
    s2 = np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)
    # shells without data take their neighbour's value (RELION replaces non-positive values)
    for i in range(1, nsh):
        if s2[i] <= 0:
            s2[i] = s2[i - 1]
    s2[0] = s2[1] if nsh > 1 else s2[0]
    return s2
