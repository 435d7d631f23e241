"""Acceptance: re-centring by (0, 0, 2.75) px moves the reconstruction by exactly that offset."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from subtomo_nb.fourier.fft import rfft3
from subtomo_nb.fourier.grid import freq_grid
from subtomo_nb.io.mrc import read_map
from subtomo_nb.tasks.recentre import recentre_star
from subtomo_nb.tasks.reconstruct import reconstruct_particles
from tests._shared import relion_reference


def phase_slope_shift(ref: np.ndarray, moved: np.ndarray, kmax_schedule=(2, 4, 6, 8)) -> np.ndarray:
    """Sub-voxel shift t (x, y, z) with ``moved ≈ ref`` translated by ``+t``, from the Fourier phase slope.

    Least squares of the phase difference ``angle(F_moved conj F_ref) = -2π k·t/N`` over
    amplitude-weighted voxels with ``|k| ≤ kmax``, refined over a growing ``kmax``.
    """
    n = ref.shape[0]
    F0, F1 = rfft3(ref.astype(np.float64)), rfft3(moved.astype(np.float64))
    kx, ky, kz = (np.broadcast_to(g, F0.shape).astype(np.float64) for g in freq_grid(n, 3))
    k = np.stack([kx, ky, kz], axis=-1)
    t = np.zeros(3)
    for kmax in kmax_schedule:
        sel = (np.sum(k * k, axis=-1) <= kmax * kmax) & (np.sum(k * k, axis=-1) > 0)
        resid = F1 * np.conj(F0) * np.exp(2j * np.pi * (k @ t) / n)
        dphi = np.angle(resid[sel])
        w = np.abs(resid[sel])
        G = -2 * np.pi * k[sel] / n
        dt = np.linalg.lstsq(G * np.sqrt(w)[:, None], dphi * np.sqrt(w), rcond=None)[0]
        t = t + dt
    return t


def test_phase_slope_shift_recovers_fourier_shift():
    rng = np.random.default_rng(0)
    from subtomo_nb.fourier.fft import irfft3, shift_half
    from subtomo_nb.fourier.filters import low_pass

    v = low_pass(rng.normal(size=(32, 32, 32)), 30.0, 6.0)
    t_true = np.array([0.4, -1.3, 2.75])
    moved = irfft3(shift_half(rfft3(v), t_true), 32)
    np.testing.assert_allclose(phase_slope_shift(v, moved), t_true, atol=1e-6)


def test_recentred_reconstruction_is_shifted_by_the_offset(tmp_path):
    ref = relion_reference() / "pseudo_subtomos_c4"
    before = reconstruct_particles(ref / "truth.star", tmp_path / "before.mrc", sym="C4").merged_path
    # a job writes inside the project; file names in the STAR stay relative to the project
    project = tmp_path / "project"
    shutil.copytree(ref, project)
    centred = recentre_star(project / "truth.star", project / "Select" / "job004" / "centred.star", (0.0, 0.0, 2.75))
    after = reconstruct_particles(centred, tmp_path / "after.mrc", sym="C4").merged_path
    m0, _ = read_map(before)
    m1, _ = read_map(after)
    # the new particle centre is the old reference point (0, 0, 2.75): the map moves by -2.75 px in z
    t = phase_slope_shift(m0, m1)
    np.testing.assert_allclose(t, [0.0, 0.0, -2.75], atol=0.05)


@pytest.mark.parametrize("offset", [(0.0, 0.0, 2.75)])
def test_recentre_on_simulated_lattice(tmp_path, tiny_extracted_truth, offset):
    star, project = tiny_extracted_truth
    before = reconstruct_particles(star, tmp_path / "before.mrc", sym="C6").merged_path
    centred = recentre_star(star, star.parent / "centred.star", offset)
    after = reconstruct_particles(centred, tmp_path / "after.mrc", sym="C6").merged_path
    m0, _ = read_map(before)
    m1, _ = read_map(after)
    t = phase_slope_shift(m0, m1)
    np.testing.assert_allclose(t, -np.asarray(offset), atol=0.05)
