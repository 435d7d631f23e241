"""Frequency grids, shells and radial averages."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.fourier.grid import (
    freq_grid,
    half_points,
    radial_average,
    radius_grid,
    round_half_away,
    shell_index,
    shell_masks,
    shell_sum,
    wrapped_freqs,
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


def test_grids_and_shell_reductions_strict() -> None:
    """Grids created on the strict device (xp=module, backend or name) and shell reductions of
    strict arrays equal numpy's."""
    pytest.importorskip("array_api_strict")
    import array_api_strict

    from subtomo_nb.backend import get_backend
    from subtomo_nb.fourier.projector import gridding_sinc2

    be = get_backend("strict")
    for xp in (array_api_strict, be, "strict"):
        for a, b in zip(freq_grid(9, 3, xp), freq_grid(9, 3)):
            assert be.owns(a)
            np.testing.assert_array_equal(be.to_host(a), b)
    np.testing.assert_array_equal(be.to_host(half_points(8, 2, be, np.float32)), half_points(8, 2, np, np.float32))
    np.testing.assert_array_equal(be.to_host(half_points(7, 3, be)), half_points(7, 3))
    np.testing.assert_array_equal(be.to_host(shell_index(10, 3, be)), shell_index(10, 3))
    np.testing.assert_array_equal(be.to_host(radius_grid(10, 2, be)), radius_grid(10, 2))
    np.testing.assert_array_equal(be.to_host(shell_masks(10, 3, [0, 4], be)), shell_masks(10, 3, [0, 4]))
    x = np.array([0.5, 1.5, -0.5, 2.49, -2.5])
    np.testing.assert_array_equal(be.to_host(round_half_away(be.to_device(x))), round_half_away(x))
    rng = np.random.default_rng(2)
    vals = rng.standard_normal((10, 10, 6)) + 1j * rng.standard_normal((10, 10, 6))
    sh = shell_index(10, 3)
    np.testing.assert_array_equal(be.to_host(shell_sum(be.to_device(vals), be.to_device(sh), 6)), shell_sum(vals, sh, 6))
    np.testing.assert_array_equal(be.to_host(radial_average(be.to_device(vals.real))), radial_average(vals.real))
    for nd, dt in ((3, np.float64), (2, np.float32)):
        np.testing.assert_array_equal(be.to_host(gridding_sinc2(12, 24, nd, be, dt)), gridding_sinc2(12, 24, nd, np, dt))


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_wrapped_freqs_equal_fftfreq(n: int) -> None:
    """``wrapped_freqs(n)`` is ``fftfreq(n) * n`` exactly (int64, or the dtype asked for), on numpy and strict."""
    ref = np.rint(np.fft.fftfreq(n, 1.0 / n)).astype(np.int64)
    got = wrapped_freqs(n)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(wrapped_freqs(n, np, np.float64), ref.astype(np.float64))
    np.testing.assert_array_equal(freq_grid(n, 2)[1][:, 0], ref)
    pytest.importorskip("array_api_strict")
    from subtomo_nb.backend import get_backend

    be = get_backend("strict")
    dev = wrapped_freqs(n, be, be.xp.float32)
    assert be.owns(dev) and dev.dtype == be.xp.float32
    np.testing.assert_array_equal(be.to_host(dev), ref.astype(np.float32))


def test_gridding_sinc2_is_numpy_sinc_squared() -> None:
    """``gridding_sinc2`` equals ``numpy.sinc(r / padded)**2`` on the centred box (r from voxel N//2)."""
    c = np.arange(9) - 4.0
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    from subtomo_nb.fourier.projector import gridding_sinc2

    np.testing.assert_array_equal(gridding_sinc2(9, 18), np.sinc(r / 18) ** 2)
    np.testing.assert_array_equal(gridding_sinc2(9, 18, 2), np.sinc(r[4] / 18) ** 2)
