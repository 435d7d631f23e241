"""RELION's initial noise estimate, shared by auto-refine and VDAM."""

from __future__ import annotations

from typing import Any

import numpy as np

from subtomo_nb.fourier.grid import shell_index
from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.io.tomograms import TomogramSet
from subtomo_nb.tasks.particle_data import TransformCache, origins_px

__all__ = ["N_SIGMA2_PARTICLES", "initial_sigma2"]

#: Particles used for the initial noise estimate (3D data, RELION).
N_SIGMA2_PARTICLES = 10


def initial_sigma2(pset: ParticleSet, rows: np.ndarray, box: int, tomograms: TomogramSet | None, dtype: Any, *,
                   transforms: TransformCache | None = None) -> np.ndarray:
    """RELION's initial noise estimate: per-shell power of the particles minus that of their mean, /2.

    For pseudo-subtomograms the power is normalised by the multiplicity, as the E-step's
    ``2 σ² M`` noise model (relion-conventions.md §5.3). The particles are centred by the origins
    of their table.

    Parameters
    ----------
    pset, rows, tomograms, dtype
        The particle set, the rows of the half-set (the first :data:`N_SIGMA2_PARTICLES` are used),
        its tomogram set and the real precision of the data.
    box
        Box size (pixels).
    transforms
        The job's device-resident transforms: the particles are read through them (and so copied
        to the device once, where the E-step finds them) and the sums run on its backend; None:
        read here into host memory.

    Returns
    -------
    (box//2+1,) noise power per shell (host).
    """
    use = np.asarray(rows)[:N_SIGMA2_PARTICLES]
    if transforms is None:
        transforms = TransformCache(pset, tomograms, dtype, max_bytes=0)
    be = transforms.backend
    xp = be.xp
    data, ctf2, mult = transforms.shifted(use, origins_px(pset, use))
    ok = (mult > 0.01) if mult is not None else None
    mean = xp.mean(data, axis=0, keepdims=True)
    resid = xp.abs(data - mean) ** 2 * (len(use) / max(len(use) - 1, 1))
    nsh = box // 2 + 1
    # the (N, N, N//2+1) shell table built on the device, broadcast over the particles there
    sh = xp.reshape(xp.broadcast_to(shell_index(box, xp=be, device=be.device), data.shape), (-1,))
    # zeros outside the data add nothing to the sums (as leaving them out)
    if ok is None:
        num = be.bincount(sh, xp.reshape(resid, (-1,)), nsh)
        den = 2.0 * be.bincount(sh, xp.ones(int(sh.shape[0]), dtype=xp.float64, device=be.device), nsh)
    else:
        num = be.bincount(sh, xp.reshape(xp.where(ok, resid, 0.0), (-1,)), nsh)
        den = 2.0 * be.bincount(sh, xp.reshape(xp.where(ok, mult, 0.0), (-1,)), nsh)
    num, den = be.to_host(num, "results"), be.to_host(den, "results")
    s2 = np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)
    # shells without data take their neighbour's value (RELION replaces non-positive values)
    for i in range(1, nsh):
        if s2[i] <= 0:
            s2[i] = s2[i - 1]
    s2[0] = s2[1] if nsh > 1 else s2[0]
    return s2
