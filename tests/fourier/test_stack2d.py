"""2D tilt stacks -> 3D pseudo-subtomograms."""

from __future__ import annotations

import numpy as np

from _fourier_helpers import make_blobs
from subtomo_nb.fourier.fft import rfft3
from subtomo_nb.fourier.grid import shell_index
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.fourier.stack2d import stack_to_pseudo_subtomo
from subtomo_nb.geometry.euler import rotation_about_axis


def test_single_untilted_image_fills_the_central_plane() -> None:
    n = 16
    rng = np.random.default_rng(0)
    S = np.fft.rfft2(rng.normal(size=(n, n)))[None] / n ** 2
    W = rng.uniform(0.5, 1.0, (1, n, n // 2 + 1))
    data, ctf2, mult = stack_to_pseudo_subtomo(S, W, np.eye(3)[None, :2], n)
    D = rfft3(data)
    # exact grid positions: the kz = 0 plane holds the image, x = 0 column Hermitian-completed
    np.testing.assert_allclose(D[0, :, 1:], S[0][:, 1:], atol=1e-14)
    np.testing.assert_allclose(ctf2[0, :, 1:], W[0][:, 1:], atol=1e-14)
    np.testing.assert_allclose(mult[0, :, 1:], 1.0, atol=1e-14)
    assert np.all(mult[1:] == 0) and np.all(ctf2[1:] == 0)
    ky = np.fft.fftfreq(n, 1 / n)
    pos = (ky > 0) & (ky < n // 2)
    np.testing.assert_allclose(D[0, pos, 0], S[0][pos, 0], atol=1e-14)
    np.testing.assert_allclose(D[0, ky < 0, 0][::-1][: pos.sum()], np.conj(S[0][pos, 0]), atol=1e-14)


def test_tilt_series_gives_wedge_of_the_3d_transform() -> None:
    n = 32
    b = make_blobs(n, seed=21, spread=4.0)
    v = b.volume()
    P = Projector(v)
    A = np.stack([rotation_about_axis(t, [0, 1, 0]) for t in np.arange(-60.0, 61.0, 3.0)])
    slices = P.slice2d(A)  # = rfft2 of the tilt images (projections along z of V(A.T r))
    data, ctf2, mult = stack_to_pseudo_subtomo(slices, np.ones(1), A[:, :2], n, data_scale=1.0 / n)
    D = rfft3(data)
    truth = rfft3(v)
    sel = (mult > 0) & (shell_index(n) <= n // 2 - 1)
    est = D[sel] / ctf2[sel]  # CTF^2 = 1: divide by the accumulated weights
    cc = np.vdot(truth[sel], est).real / np.sqrt(np.vdot(truth[sel], truth[sel]).real * np.vdot(est, est).real)
    assert cc > 0.98, cc
    np.testing.assert_allclose(np.abs(est).sum() / np.abs(truth[sel]).sum(), 1.0, atol=0.03)  # data_scale 1/n
    np.testing.assert_allclose(ctf2, mult)  # weights of one
    # the wedge: nothing sampled beyond ~60 degrees from the x axis in the x-z plane
    kx = np.arange(n // 2 + 1)[None, None, :]
    kz = np.fft.fftfreq(n, 1 / n)[:, None, None]
    ang = np.degrees(np.arctan2(np.abs(kz), kx)) + 0 * mult
    far = shell_index(n) >= 6
    assert not np.any((mult > 0) & (ang > 70) & far & (np.abs(np.fft.fftfreq(n, 1 / n))[None, :, None] < 2))
    assert np.all(mult[(ang < 55) & far & (shell_index(n) < n // 2)] > 0)
