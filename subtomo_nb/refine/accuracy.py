"""RELION's expected angular and translational accuracy of the current reference (§6.11).

Used by auto-sampling in auto-refine and VDAM: how far a pose can move before the
noise-weighted squared difference of its reference projections exceeds ``-ln(0.01)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subtomo_nb.backend import Backend
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.refine.expectation import FourierSelection
from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.io.tomograms import TomogramSet
from subtomo_nb.tasks.particle_data import TransformCache

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


def estimate_accuracy(projector: Projector, particles: ParticleSet | TransformCache, rows: np.ndarray,
                      angles: np.ndarray, sigma2: np.ndarray, box: int, pix: float, current_size: int,
                      tomograms: TomogramSet | None, rng: np.random.Generator, dtype: type, *,
                      backend: str | Backend = "numpy") -> tuple[float, float]:
    """RELION's expected angular (°) and translational (Å) accuracy (§6.11), vectorised, on the device.

    For each of the first particles, one Euler angle (rot, tilt or psi, drawn at random per
    particle) or one offset component (x, y or z) is increased along RELION's error steps until the
    noise-weighted squared difference of the CTF-weighted reference projections, over the
    frequencies of the current image size, exceeds -ln(0.01); the accuracies are the mean errors
    reached (a particle that never gets there counts with the last step, as in RELION).

    Parameters
    ----------
    projector : the reference's projector (on the particles' backend).
    particles : the job's device-resident :class:`~subtomo_nb.tasks.particle_data.TransformCache`
        (its CTF² and multiplicities are used where they are: no particle is read or copied
        again), or a particle set, read here (with ``tomograms``, at ``dtype``) and copied to
        ``backend``'s device.
    rows : (m,) particle rows; the first :data:`N_ACCURACY_PARTICLES` are used.
    angles : (n, 3) current rot, tilt, psi of all particles (degrees).
    sigma2 : (box//2+1,) noise power per shell.
    box, pix : box size (pixels) and pixel size (Å).
    current_size : the iteration's image size (pixels); frequencies up to ``current_size // 2``.
    rng : draws which angle / offset component each particle perturbs.
    backend : with a particle set, the backend to run on (a cache brings its own).
    """
    if isinstance(particles, TransformCache):
        cache = particles
    else:
        cache = TransformCache(particles, tomograms, dtype, max_bytes=0, backend=backend)
    be = cache.backend
    xp = be.xp
    use = np.asarray(rows)[:N_ACCURACY_PARTICLES]
    n = len(use)
    _, ctf2, mult = cache.raw(use)
    sel = FourierSelection.make(box, max(current_size // 2, 1))
    index = be.to_device(sel.index, "metadata")
    points = be.to_device(sel.points, "metadata")
    f64 = xp.float64
    W = xp.astype(xp.take(xp.reshape(ctf2, (n, -1)), index, axis=1), f64)
    M = (xp.ones(W.shape, dtype=f64, device=be.device) if mult is None
         else xp.take(xp.reshape(mult, (n, -1)), index, axis=1))        # the data's precision, as read
    noise = be.to_device(np.asarray(sigma2, dtype=np.float64)[sel.shell], "metadata")
    floor = xp.full((), 1e-6, dtype=M.dtype, device=be.device)      # made there, not copied
    inv = xp.where(M > 0.01, 1.0 / (2.0 * noise * xp.maximum(M, floor)), 0.0)
    weight = W ** 2 * inv                                              # (n, K)
    c128 = xp.complex128
    ang0 = np.asarray(angles, dtype=np.float64)[use]
    V0 = xp.astype(projector.sample(be.to_device(euler_to_matrix(*ang0.T), "metadata"), points), c128)  # (n, K)
    # angles: perturb rot, tilt or psi (one per particle) by each trial error
    which = rng.integers(0, 3, size=n)
    trial = np.repeat(ang0[:, None, :], len(ANGULAR_ERROR_STEPS), axis=1)   # (n, S, 3)
    trial[np.arange(n), :, which] += ANGULAR_ERROR_STEPS
    A1 = be.to_device(euler_to_matrix(*trial.reshape(-1, 3).T), "metadata")
    V1 = xp.reshape(projector.sample(A1, points), (n, len(ANGULAR_ERROR_STEPS), -1))
    d2 = _weighted_sums(weight, xp.abs(V1 - V0[:, None, :]) ** 2, xp)
    acc_rot = ANGULAR_ERROR_STEPS[_first_above(be.to_host(d2, "results"), ACCURACY_THRESHOLD)]
    # translations: shift along x, y or z (one per particle)
    axis = rng.integers(0, 3, size=n)
    k_axis = be.to_device(np.ascontiguousarray(sel.points[:, axis].T), "metadata")       # (n, K)
    steps = be.to_device(TRANSLATION_ERROR_STEPS, "metadata")
    # numpy's order: (-2i pi / box) * step first, then times k (both products complex)
    factor = xp.full((), -2j * np.pi / box, dtype=c128, device=be.device)
    phase = xp.exp((factor * xp.astype(steps[None, :, None], c128)) * xp.astype(k_axis[:, None, :], c128))
    d2t = _weighted_sums(weight, xp.abs(V0[:, None, :] * (phase - 1.0)) ** 2, xp)
    acc_t = TRANSLATION_ERROR_STEPS[_first_above(be.to_host(d2t, "results"), ACCURACY_THRESHOLD)]
    return float(acc_rot.mean()), float(acc_t.mean() * pix)


def _weighted_sums(weight: Any, values: Any, xp: Any) -> Any:
    """``(n, S)`` sums over k of ``weight[n, k] * values[n, s, k]`` (``einsum("nk,nsk->ns")``)."""
    return xp.sum(weight[:, None, :] * values, axis=-1)


def _first_above(d2: np.ndarray, threshold: float) -> np.ndarray:
    """Per row, the index of the first entry above ``threshold`` (the last index where none is)."""
    above = d2 > threshold
    return np.where(above.any(axis=1), np.argmax(above, axis=1), d2.shape[1] - 1)
