"""``relion_align_symmetry`` (conventions §7.3): the search and the alignment accuracy.

The files, the job and ``subtomo align-symmetry``: tests/jobs/test_align_symmetry_job.py.

The phantom is rendered analytically (the same Fourier sampling as
:func:`subtomo_nb.simulate.phantom.render_map`) with its blobs rotated and shifted, so that the
truth does not depend on the rotation code under test.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from subtomo_nb.fourier.filters import fourier_crop
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.symmetry import point_group, symmetrise_map
from subtomo_nb.initial_model.align_symmetry import align_symmetry
from subtomo_nb.initial_model.map_geometry import centre_of_mass, rotate_map
from subtomo_nb.initial_model.symmetry_search import local_orientations, random_orientations, symmetry_scores
from subtomo_nb.simulate.phantom import blobs, render_map

BOX, PIX, WORK = 64, 5.4, 32


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _render(centres: np.ndarray, sigmas: np.ndarray, amps: np.ndarray, box: int = BOX, pix: float = PIX) -> np.ndarray:
    """Gaussian blobs (centres in Å from voxel box//2) sampled in Fourier space up to Nyquist."""
    kx = np.fft.rfftfreq(box) / pix
    k = np.fft.fftfreq(box) / pix
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    F = np.zeros(k2.shape, dtype=np.complex128)
    for sigma in np.unique(sigmas):
        sel = sigmas == sigma
        env = (2 * np.pi * sigma**2) ** 1.5 * np.exp(-2 * np.pi**2 * sigma**2 * k2)
        F += env * np.einsum("b,bz,by,bx->zyx", amps[sel], np.exp(-2j * np.pi * k[None, :] * centres[sel, 2:3]),
                             np.exp(-2j * np.pi * k[None, :] * centres[sel, 1:2]),
                             np.exp(-2j * np.pi * kx[None, :] * centres[sel, 0:1]), optimize=True)
    v = np.fft.irfftn(F, s=(box, box, box), axes=(0, 1, 2)) / pix**3
    return np.fft.fftshift(v).astype(np.float32)


def _mass_centre(c: np.ndarray, s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Centre of mass (Å) of Gaussian blobs (mass ∝ amplitude · sigma³)."""
    m = a * s**3
    return m @ c / m.sum()


def _axis_angle_deg(v: np.ndarray, axis: np.ndarray) -> float:
    """Angle between two lines (degrees, 0..90)."""
    c = abs(float(np.dot(v, axis))) / (np.linalg.norm(v) * np.linalg.norm(axis))
    return float(np.degrees(np.arccos(min(1.0, c))))


def _about_z(M: np.ndarray) -> np.ndarray:
    """The rotation about z (times a 180° turn about x if M flips z) closest to M."""
    D = np.eye(3) if M[2, 2] > 0 else np.diag([1.0, -1.0, -1.0])
    MD = M @ D
    phi = np.arctan2(MD[1, 0], MD[0, 0])
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ D


def _corr_in_sphere(x: np.ndarray, y: np.ndarray, radius_px: float) -> float:
    n = x.shape[0]
    g = np.indices(x.shape) - n // 2
    m = (g**2).sum(axis=0) <= radius_px**2
    a, b = x[m] - x[m].mean(), y[m] - y[m].mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _d2_blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chiral D2 tetramer: four copies of one asymmetric unit under RELION's D2 operators."""
    unit = np.array([[30.0, 8.0, 20.0], [18.0, 25.0, 10.0], [40.0, -6.0, 4.0], [10.0, 12.0, 34.0]])
    sig = np.array([8.0, 7.0, 6.0, 6.5])
    amp = np.array([1.0, 0.9, 0.6, 0.7])
    ops = [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0])]
    return np.concatenate([unit @ R.T for R in ops]), np.tile(sig, 4), np.tile(amp, 4)


@pytest.fixture(scope="module")
def hexamer() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return blobs()


# ----------------------------------------------------------------------------------------------
# pieces of the algorithm
# ----------------------------------------------------------------------------------------------


def test_render_helper_is_the_phantom(hexamer):
    assert np.allclose(_render(*hexamer), render_map(BOX, PIX), atol=1e-4 * float(render_map(BOX, PIX).max()))


def test_random_orientations_are_uniform_on_the_sphere_as_relion_draws_them():
    ang = random_orientations(20000, 7)
    rot, tilt, psi = ang.T
    assert ang.shape == (20000, 3)
    assert rot.min() >= 0 and rot.max() < 360 and psi.min() >= 0 and psi.max() < 360
    assert tilt.min() >= 0 and tilt.max() < 180
    # uniform directions: cos(tilt) uniform on [-1, 1] (10 bins of 2000 ± 5 sigma)
    counts, _ = np.histogram(np.cos(np.deg2rad(tilt)), bins=10, range=(-1, 1))
    assert np.all(np.abs(counts - 2000) < 5 * np.sqrt(2000))
    assert np.array_equal(random_orientations(50, 3), random_orientations(50, 3))
    only = random_orientations(30, 1, only_rot=True)
    assert np.all(only[:, 1:] == 0) and np.ptp(only[:, 0]) > 0


def test_local_grid_steps_psi_by_the_range_as_relion():
    g = local_orientations(10.0, 20.0, 30.0, 2, 1.5)
    assert g.shape == (125, 3)
    assert np.allclose(g[0], [7.0, 17.0, 26.0])  # i (rot) slowest, k (psi) fastest
    assert np.allclose(np.unique(g[:, 0]), 10 + 1.5 * np.arange(-2, 3))
    assert np.allclose(np.unique(g[:, 1]), 20 + 1.5 * np.arange(-2, 3))
    assert np.allclose(np.unique(g[:, 2]), 30 + 2.0 * np.arange(-2, 3))
    only = local_orientations(10.0, 20.0, 30.0, 3, 2.0, only_rot=True)
    assert only.shape == (7, 3) and np.all(only[:, 1] == 20) and np.all(only[:, 2] == 30)


def test_centre_of_mass_of_a_shifted_phantom(hexamer):
    c, s, a = hexamer
    t = np.array([2.0, -3.0, 1.5]) * PIX
    com = centre_of_mass(_render(c + t, s, a))
    assert np.allclose(com, (_mass_centre(c, s, a) + t) / PIX, atol=0.02)


def test_fourier_score_equals_real_space_symmetrisation_difference():
    """diff2 from the batched Fourier formula vs RELION's rotate + symmetriseMap + sum of squares."""
    work = fourier_crop(render_map(BOX, PIX), WORK)
    ops = point_group("C6")
    angles = np.vstack([[0.0, 0.0, 0.0], random_orientations(6, 11)])
    fast = symmetry_scores(Projector(work), angles, ops)
    direct = []
    for a in angles:
        rotated = rotate_map(work, *a)
        direct.append(float(((rotated - symmetrise_map(rotated, ops)) ** 2).sum()))
    direct = np.array(direct)
    # misaligned orientations: same value within real-space interpolation error
    assert np.allclose(fast[1:], direct[1:], rtol=0.15)
    assert np.array_equal(np.argsort(fast[1:]), np.argsort(direct[1:])) or np.corrcoef(fast[1:], direct[1:])[0, 1] > 0.95
    # C6 along z already: far better than any random orientation, in both
    assert fast[0] < 0.2 * fast[1:].min() and direct[0] < 0.2 * direct[1:].min()
    # psi does not change the C6 score (the axis only depends on rot and tilt)
    assert np.allclose(symmetry_scores(Projector(work), [[40, 70, 0], [40, 70, 123]], ops)[0],
                       symmetry_scores(Projector(work), [[40, 70, 123]], ops)[0], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# alignment accuracy
# ----------------------------------------------------------------------------------------------


def test_c6_phantom_rotated_and_shifted_is_put_on_z_and_symmetrised(hexamer):
    c, s, a = hexamer
    com = _mass_centre(c, s, a)
    Q = Rotation.random(random_state=1234).as_matrix()
    t = np.array([3.0, -2.0, 2.5]) * PIX
    volume = _render(c @ Q.T + t, s, a)
    t0 = time.perf_counter()
    res = align_symmetry(volume, "C6", PIX, box_size=WORK, apply_sym=True, seed=0)
    seconds = time.perf_counter() - t0
    M = res.matrix @ Q  # truth frame -> output frame
    err = _axis_angle_deg(M @ [0.0, 0.0, 1.0], np.array([0.0, 0.0, 1.0]))
    truth = _render((c - com) @ _about_z(M).T, s, a)
    corr = _corr_in_sphere(res.volume, truth, 0.45 * BOX)
    print(f"C6 shifted: axis error {err:.2f} deg, corr {corr:.4f}, {seconds:.1f} s")
    assert res.volume.shape == volume.shape and res.volume.dtype == np.float32
    assert np.allclose(res.centre_shift_px, -(Q @ com + t) / PIX, atol=0.05)
    assert err < 3.0
    assert corr > 0.95
    # the output is C6-symmetric about z: symmetrising again changes it only by interpolation
    again = symmetrise_map(res.volume, point_group("C6"))
    assert np.linalg.norm(again - res.volume) < 0.1 * np.linalg.norm(res.volume)  # C7 on the phantom: 0.64


def test_c6_noisy_phantom_keep_centre(hexamer):
    c, s, a = hexamer
    Q = Rotation.random(random_state=99).as_matrix()
    clean = _render(c @ Q.T, s, a)
    noisy = clean + np.random.default_rng(5).normal(0.0, float(clean.std()), clean.shape).astype(np.float32)
    t0 = time.perf_counter()
    res = align_symmetry(noisy, "C6", PIX, box_size=WORK, keep_centre=True, apply_sym=True, seed=1)
    seconds = time.perf_counter() - t0
    M = res.matrix @ Q
    err = _axis_angle_deg(M @ [0.0, 0.0, 1.0], np.array([0.0, 0.0, 1.0]))
    corr = _corr_in_sphere(res.volume, _render(c @ _about_z(M).T, s, a), 0.45 * BOX)
    print(f"C6 noisy (SNR 1): axis error {err:.2f} deg, corr {corr:.4f}, {seconds:.1f} s")
    assert res.centre_shift_px == (0.0, 0.0, 0.0)
    assert err < 3.0
    assert corr > 0.95


def test_d2_tetramer_axes_on_x_y_z():
    c, s, a = _d2_blobs()
    Q = Rotation.random(random_state=2024).as_matrix()
    volume = _render(c @ Q.T, s, a)
    t0 = time.perf_counter()
    res = align_symmetry(volume, "D2", PIX, box_size=WORK, keep_centre=True, nr_uniform=1000, seed=3)
    seconds = time.perf_counter() - t0
    M = res.matrix @ Q
    # each 2-fold axis of the truth (x, y, z) must land on one of the coordinate axes
    errs = [min(_axis_angle_deg(M[:, i], np.eye(3)[j]) for j in range(3)) for i in range(3)]
    print(f"D2: axis errors {np.round(errs, 2)} deg, {seconds:.1f} s")
    assert max(errs) < 3.0


def test_c1_leaves_the_map_unchanged():
    v = render_map(32, 10.8)
    res = align_symmetry(v, "C1", 10.8)
    assert np.array_equal(res.volume, v) and res.volume is not v
    assert (res.rot, res.tilt, res.psi, res.score) == (0.0, 0.0, 0.0, 0.0)


def test_bad_arguments_are_refused():
    v = render_map(32, 10.8)
    with pytest.raises(ValueError, match="'X7'"):
        align_symmetry(v, "X7", 10.8)
    with pytest.raises(ValueError, match="even"):
        align_symmetry(v, "C6", 10.8, box_size=15)
    with pytest.raises(ValueError, match="cubic"):
        align_symmetry(v[:, :, :30], "C6", 10.8)
