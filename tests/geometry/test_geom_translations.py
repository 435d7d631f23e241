"""Translational sampling (RELION HealpixSampling::setTranslations, oversampling)."""

from __future__ import annotations

import numpy as np

from subtomo_nb.geometry.translations import oversampled_translations, translation_grid


def test_grid_counts_and_radius():
    t3 = translation_grid(5.0, 1.0, 1.0)
    assert t3.shape == (515, 3)  # integer points with x²+y²+z² <= 25
    t2 = translation_grid(5.0, 1.0, 1.0, dim=2)
    assert t2.shape == (81, 2)
    assert np.linalg.norm(t3, axis=1).max() <= 5.0
    assert len(np.unique(t3, axis=0)) == len(t3)
    assert (t3 == 0).all(axis=1).sum() == 1
    # Å -> pixels: range 20 Å, step 8 Å on 4 Å pixels = range 5 px, step 2 px
    t = translation_grid(20.0, 8.0, 4.0)
    assert t.shape == (81, 3) and np.allclose(np.unique(t), [-4, -2, 0, 2, 4])
    # order: x outer, z inner
    assert np.allclose(t[:4], [[-4, -2, -2], [-4, -2, 0], [-4, -2, 2], [-4, 0, -2]])
    assert np.all(np.diff(t[:, 0]) >= 0)
    # range < step: only the origin
    assert translation_grid(1.0, 2.0, 1.0).shape == (1, 3)


def test_oversampled():
    t = translation_grid(4.0, 2.0, 1.0)
    o = oversampled_translations(t, 2.0, 1.0)
    assert o.shape == (len(t), 8, 3)
    assert np.allclose(o.mean(axis=1), t)
    assert np.allclose(np.abs(o - t[:, None]), 0.5)  # ± step/4
    o2 = oversampled_translations(t[:, :2], 2.0, 1.0)
    assert o2.shape == (len(t), 4, 2)
    # children of neighbours tile a half-step grid without overlap
    allc = o.reshape(-1, 3)
    assert len(np.unique(np.round(allc, 6), axis=0)) == len(allc)
    o4 = oversampled_translations(np.zeros((1, 3)), 2.0, 1.0, oversampling=2)
    assert o4.shape == (1, 64, 3) and np.allclose(np.unique(o4), [-0.75, -0.25, 0.25, 0.75])
