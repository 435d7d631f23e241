"""Frequency grids, shells and radial averages."""

from __future__ import annotations

import numpy as np

from subtomo_nb.fourier.grid import (
    freq_grid,
    half_points,
    radial_average,
    round_half_away,
    shell_index,
    shell_masks,
)


def test_freq_grid_layout() -> None:
    kx, ky, kz = freq_grid(8, 3)
    assert kx.ravel().tolist() == [0, 1, 2, 3, 4]
    assert ky.ravel().tolist() == [0, 1, 2, 3, -4, -3, -2, -1]
    assert kz.shape == (8, 1, 1)
    kx2, ky2 = freq_grid(7, 2)
    assert kx2.ravel().tolist() == [0, 1, 2, 3]
    assert ky2.ravel().tolist() == [0, 1, 2, 3, -3, -2, -1]
    p = half_points(8, 2)
    assert p.shape == (8, 5, 3) and np.all(p[..., 2] == 0)
    assert p[5, 3].tolist() == [3, -3, 0]


def test_round_half_away_and_shells() -> None:
    assert round_half_away(np.array([0.5, 1.5, -0.5, 2.49, -2.5])).tolist() == [1, 2, -1, 2, -3]
    sh = shell_index(16, 3)
    assert sh.shape == (16, 16, 9)
    assert sh[0, 0, 3] == 3 and sh[1, 1, 1] == 2 and sh[0, 3, 4] == 5  # sqrt(3)=1.73 -> 2; 3-4-5
    m = shell_masks(16, 3, shells=[0, 5])
    assert m[0].sum() == 1 and np.array_equal(m[1], sh == 5)


def test_radial_average_of_known_function() -> None:
    n = 16
    sh = shell_index(n, 3)
    vals = 2.0 * sh.astype(float) + 1.0  # constant per shell
    avg = radial_average(vals)
    np.testing.assert_allclose(avg, 2.0 * np.arange(n // 2 + 1) + 1.0)
