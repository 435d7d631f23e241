"""RELION's accuracy estimate (calculateExpectedAngularErrors) against a direct per-particle search."""

from __future__ import annotations

import numpy as np

from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.io.mrc import read_map
from subtomo_nb.refine.accuracy import (
    ACCURACY_THRESHOLD,
    ANGULAR_ERROR_STEPS,
    TRANSLATION_ERROR_STEPS,
)
from subtomo_nb.refine.accuracy import estimate_accuracy as _estimate_accuracy
from subtomo_nb.refine.expectation import FourierSelection
from subtomo_nb.tasks.particle_data import load_particle_set, particle_transforms

#: Noise power per shell giving errors of a few degrees and tenths of a pixel for the tiny map.
SIGMA2 = 1e-6


def test_error_steps_follow_relions_schedule():
    a = ANGULAR_ERROR_STEPS
    assert a[:4].tolist() == [0.05, 0.1, 0.15, 0.2] and a[4] == 0.3 and a[-1] == 35.0
    assert np.allclose(np.diff(a)[(a[:-1] >= 2.0) & (a[:-1] < 5.0)], 0.5)
    assert TRANSLATION_ERROR_STEPS[0] == 0.1 and TRANSLATION_ERROR_STEPS[-1] == 12.0


def _direct_search(V, A0_angles, which, axis, weight, points, box):
    """One particle at a time, one trial error at a time, stopping at the first above threshold."""
    acc_r, acc_t = [], []
    for n in range(len(A0_angles)):
        v0 = V(euler_to_matrix(*A0_angles[n])[None])[0]
        for e in ANGULAR_ERROR_STEPS:
            ang = A0_angles[n].copy()
            ang[which[n]] += e
            v1 = V(euler_to_matrix(*ang)[None])[0]
            if np.sum(weight[n] * np.abs(v1 - v0) ** 2) > ACCURACY_THRESHOLD:
                break
        acc_r.append(e)
        for e in TRANSLATION_ERROR_STEPS:
            ph = np.exp(-2j * np.pi / box * e * points[:, axis[n]])
            if np.sum(weight[n] * np.abs(v0 * (ph - 1)) ** 2) > ACCURACY_THRESHOLD:
                break
        acc_t.append(e)
    return np.mean(acc_r), np.mean(acc_t)


def test_vectorised_estimate_equals_direct_search(tiny_project, tiny_extract_3d):
    pset, tomos = load_particle_set(tiny_extract_3d)
    ref, _ = read_map(tiny_project["map"])
    box, pix = ref.shape[0], 10.8
    proj = Projector(np.asarray(ref, dtype=np.float64), pad=2)
    rows = np.arange(len(pset.particles))
    rng_angles = np.random.default_rng(3)
    angles = rng_angles.uniform([-180, 0, -180], [180, 180, 180], size=(len(rows), 3))
    sigma2 = np.full(box // 2 + 1, SIGMA2)
    current_size = 20
    acc_rot, acc_trans_A = _estimate_accuracy(proj, pset, rows, angles, sigma2, box, pix, current_size, tomos,
                                              np.random.default_rng(7), np.float64)
    # the same random choices, drawn in the same order
    rng = np.random.default_rng(7)
    use = rows[:10]
    which, axis = rng.integers(0, 3, size=len(use)), rng.integers(0, 3, size=len(use))
    _, ctf2, mult = particle_transforms(pset, use, tomograms=tomos, dtype=np.float64)
    sel = FourierSelection.make(box, current_size // 2)
    assert sel.points.max() <= current_size // 2
    W = ctf2.reshape(len(use), -1)[:, sel.index]
    M = np.ones_like(W) if mult is None else mult.reshape(len(use), -1)[:, sel.index]
    weight = W ** 2 * np.where(M > 0.01, 1.0 / (2 * sigma2[sel.shell] * np.maximum(M, 1e-6)), 0.0)
    ref_rot, ref_t = _direct_search(lambda A: proj.sample(A, sel.points), angles[use], which, axis, weight,
                                    sel.points, box)
    assert acc_rot == ref_rot and 1.0 < acc_rot < 20.0
    assert abs(acc_trans_A - ref_t * pix) < 1e-9 and 0.1 < ref_t < 12
    # only the current image size counts: up to Nyquist the same particles are more accurate
    acc_nyq, _ = _estimate_accuracy(proj, pset, rows, angles, sigma2, box, pix, box, tomos,
                                    np.random.default_rng(7), np.float64)
    assert acc_nyq < acc_rot





def test_estimate_on_strict_device_from_the_cached_transforms_equals_numpy(tiny_project, tiny_extract_3d):
    """On the strict device, from the job's device-resident transforms: numpy's accuracies, no particle re-read."""
    from subtomo_nb.backend import get_backend
    from subtomo_nb.tasks.particle_data import TransformCache

    pset, tomos = load_particle_set(tiny_extract_3d)
    ref, _ = read_map(tiny_project["map"])
    box, pix = ref.shape[0], 10.8
    rows = np.arange(len(pset.particles))
    angles = np.random.default_rng(3).uniform([-180, 0, -180], [180, 180, 180], size=(len(rows), 3))
    sigma2 = np.full(box // 2 + 1, SIGMA2)
    be = get_backend("strict")
    want = _estimate_accuracy(Projector(np.asarray(ref, dtype=np.float32), pad=2), pset, rows, angles, sigma2, box,
                              pix, 20, tomos, np.random.default_rng(7), np.float32)
    cache = TransformCache(pset, tomos, np.float32, backend="strict")
    cache.raw(rows[:10])                      # the job read them in its first E-step
    be.transfers.reset()
    proj = Projector(be.to_device(np.asarray(ref, dtype=np.float32)), pad=2)
    got = _estimate_accuracy(proj, cache, rows, angles, sigma2, box, pix, 20, tomos, np.random.default_rng(7),
                             np.float32)
    assert got == want and 1.0 < want[0] < 30.0
    assert be.transfers.copies("h2d", "particles") == 0
