"""The starting reference's symmetry check: left alone when it fits, put on RELION's axes when not."""

from __future__ import annotations

import numpy as np

from subtomo_nb.fourier.fft import irfft3, shift_half
from subtomo_nb.fourier.filters import low_pass
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.io.mrc import read_map
from subtomo_nb.refine.reference import ASYMMETRY_THRESHOLD, check_reference_symmetry, symmetry_residual


def _truth(tiny_project):
    vol, pix = read_map(tiny_project["map"])
    return low_pass(np.asarray(vol, dtype=np.float64), 50.0, pix), pix


def _moved(vol, angles, shift_px):
    F = shift_half(Projector(vol, pad=2).rotate3d(euler_to_matrix(*angles)), np.asarray(shift_px, float), vol.shape[0])
    return irfft3(F, vol.shape[0])


def _z_profile(vol):
    p = vol.sum(axis=(1, 2))
    return (p - p.mean()) / np.linalg.norm(p - p.mean())


def test_symmetric_reference_is_left_exactly_as_it_is(tiny_project):
    vol, pix = _truth(tiny_project)
    check = check_reference_symmetry(vol, "C6", pix)
    assert not check.aligned and check.residual < ASYMMETRY_THRESHOLD
    assert np.array_equal(check.volume, vol)
    # rotating about the symmetry axis and shifting along it keeps the C6 symmetry about the box axis
    moved = _moved(vol, (20.0, 0.0, 0.0), (0.0, 0.0, 3.0))
    assert not check_reference_symmetry(moved, "C6", pix).aligned
    assert check_reference_symmetry(_moved(vol, (0.0, 20.0, 0.0), (3.0, 0.0, 0.0)), "C1", pix).residual == 0.0


def test_tilted_and_displaced_reference_is_put_on_the_axes(tiny_project):
    vol, pix = _truth(tiny_project)
    moved = _moved(vol, (0.0, 20.0, 0.0), (3.0, 0.0, 0.0))
    assert symmetry_residual(moved, "C6") > 10 * ASYMMETRY_THRESHOLD
    check = check_reference_symmetry(moved, "C6", pix)
    assert check.aligned and check.aligned_residual < ASYMMETRY_THRESHOLD
    assert np.linalg.norm(np.asarray(check.centre_shift_px)[:2] + [3.0, 0.0]) < 0.5   # the 3 px undone
    # the aligned map has the truth's profile along z (either way up: C6 has no preferred sense)
    p_al, p_true = _z_profile(check.volume), _z_profile(vol)
    corr = max(float(p_al @ p_true), float(np.roll(p_al[::-1], 1) @ p_true))   # z -> -z about the centre
    assert corr > 0.97, corr
    assert "relion_align_symmetry" in check.describe("C6")
