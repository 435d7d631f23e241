"""RELION's expected angular and translational accuracy of the current reference (§6.11).

Used by auto-sampling in auto-refine and VDAM: how far a pose can move before the
noise-weighted squared difference of its reference projections exceeds ``-ln(0.01)``.
"""

from __future__ import annotations

import numpy as np

from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.refine.expectation import FourierSelection
from subtomo_nb.tasks.particle_data import particle_transforms

__all__ = ["N_ACCURACY_PARTICLES", "ACCURACY_THRESHOLD", "accuracy_steps", "ANGULAR_ERROR_STEPS",
           "TRANSLATION_ERROR_STEPS", "estimate_accuracy"]

#: Particles used for the accuracy estimate (3D data, RELION).
N_ACCURACY_PARTICLES = 10
#: Significance level of the accuracy estimate: -ln(0.01).
ACCURACY_THRESHOLD = 4.60517


def accuracy_steps(limit: float, schedule: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Trial errors of RELION's accuracy search: step ``s`` while the error is below ``bound``.

    ``schedule`` holds ``(bound, step)`` pairs in increasing order; the last step applies beyond
    the last bound. Errors stop at the first one above ``limit`` (RELION's search stops there too).
    """
    out, e = [], 0.0
    while True:
        step = next((st for bound, st in schedule if e < bound - 1e-9), schedule[-1][1])
        e = round(e + step, 6)
        out.append(e)
        if e > limit:
            return np.asarray(out)


#: RELION's angular error steps (degrees) of the accuracy search, and where it gives up (> 30°).
ANGULAR_ERROR_STEPS = accuracy_steps(30.0, ((0.2, 0.05), (1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0),
                                            (20.0, 2.0), (np.inf, 5.0)))
#: RELION's translational error steps (pixels), giving up above 10 pixels.
TRANSLATION_ERROR_STEPS = accuracy_steps(10.0, ((1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0), (np.inf, 2.0)))


def estimate_accuracy(projector: Projector, pset, rows, angles, sigma2, box, pix, current_size, tomograms,
                       rng: np.random.Generator, dtype) -> tuple[float, float]:
    """RELION's expected angular (°) and translational (Å) accuracy (§6.11), vectorised.

    For each of the first particles, one Euler angle (rot, tilt or psi, drawn at random per
    particle) or one offset component (x, y or z) is increased along RELION's error steps until the
    noise-weighted squared difference of the CTF-weighted reference projections, over the
    frequencies of the current image size, exceeds -ln(0.01); the accuracies are the mean errors
    reached (a particle that never gets there counts with the last step, as in RELION).

    Parameters
    ----------
    angles : (n, 3) current rot, tilt, psi of all particles (degrees).
    sigma2 : (box//2+1,) noise power per shell.
    current_size : the iteration's image size (pixels); frequencies up to ``current_size // 2``.
    """
    use = rows[:N_ACCURACY_PARTICLES]
    n = len(use)
    _, ctf2, mult = particle_transforms(pset, use, tomograms=tomograms, dtype=dtype)
    mult = np.ones(ctf2.shape) if mult is None else mult
    sel = FourierSelection.make(box, max(current_size // 2, 1))
    W = ctf2.reshape(n, -1)[:, sel.index].astype(np.float64)
    M = mult.reshape(n, -1)[:, sel.index]
    inv = np.where(M > 0.01, 1.0 / (2.0 * sigma2[sel.shell] * np.maximum(M, 1e-6)), 0.0)
    weight = W ** 2 * inv                                              # (n, K)
    ang0 = np.asarray(angles, dtype=np.float64)[use]
    V0 = projector.sample(euler_to_matrix(*ang0.T), sel.points).astype(np.complex128)   # (n, K)
    # angles: perturb rot, tilt or psi (one per particle) by each trial error
    which = rng.integers(0, 3, size=n)
    trial = np.repeat(ang0[:, None, :], len(ANGULAR_ERROR_STEPS), axis=1)   # (n, S, 3)
    trial[np.arange(n), :, which] += ANGULAR_ERROR_STEPS
    V1 = projector.sample(euler_to_matrix(*trial.reshape(-1, 3).T), sel.points).reshape(n, len(ANGULAR_ERROR_STEPS), -1)
    d2 = np.einsum("nk,nsk->ns", weight, np.abs(V1 - V0[:, None]) ** 2)
    acc_rot = ANGULAR_ERROR_STEPS[_first_above(d2, ACCURACY_THRESHOLD)]
    # translations: shift along x, y or z (one per particle)
    axis = rng.integers(0, 3, size=n)
    k_axis = sel.points[:, axis].T                                     # (n, K)
    phase = np.exp((-2j * np.pi / box) * TRANSLATION_ERROR_STEPS[None, :, None] * k_axis[:, None, :])
    d2t = np.einsum("nk,nsk->ns", weight, np.abs(V0[:, None] * (phase - 1.0)) ** 2)
    acc_t = TRANSLATION_ERROR_STEPS[_first_above(d2t, ACCURACY_THRESHOLD)]
    return float(acc_rot.mean()), float(acc_t.mean() * pix)


def _first_above(d2: np.ndarray, threshold: float) -> np.ndarray:
    """Per row, the index of the first entry above ``threshold`` (the last index where none is)."""
    above = d2 > threshold
    return np.where(above.any(axis=1), np.argmax(above, axis=1), d2.shape[1] - 1)
