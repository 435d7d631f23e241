"""The pose driver's shared rules and ParticlePoses (used by auto-refine and VDAM alike)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.refine.expectation import BatchResult
from subtomo_nb.refine.poses import (
    ParticlePoses,
    change_statistics,
    particle_radius_px,
    shell_of_resolution,
    sigma2_from_sums,
)
from subtomo_nb.refine.sampling import Sampling


def test_shell_of_resolution_rounds_halves_up_as_relion():
    # RELION's getPixelFromResolution: (int)ROUND(box * pixel / res), ROUND(x) = (int)(x + 0.5) for x > 0
    assert shell_of_resolution(32 * 10.0 / 4.5, 32, 10.0) == 5     # Python's round() gives 4
    assert shell_of_resolution(32 * 10.0 / 6.4999, 32, 10.0) == 6
    assert shell_of_resolution(50.0, 32, 10.8) == 7                 # 6.912
    assert shell_of_resolution(-1.0, 32, 10.0) == 0


def test_particle_radius_defaults_to_the_box_minus_the_edge():
    assert particle_radius_px(230.0, 32, 10.0) == pytest.approx(11.5)
    assert particle_radius_px(-1.0, 32, 10.0) == pytest.approx((32 - 5) / 2)


def test_sigma2_keeps_shells_without_data():
    prev = np.array([1.0, 2.0, 3.0])
    new = sigma2_from_sums(np.array([4.0, -1.0, 0.0]), np.array([2.0, 1.0, 0.0]), prev)
    np.testing.assert_array_equal(new, [2.0, 2.0, 3.0])


def _poses(n=4, tilt_prior=True):
    tab = pd.DataFrame({"rlnAngleRot": np.arange(n, dtype=float), "rlnAngleTilt": np.full(n, 90.0),
                        "rlnAnglePsi": np.zeros(n), "rlnOriginXAngst": np.ones(n)})
    if tilt_prior:
        tab["rlnAngleTiltPrior"] = np.full(n, 80.0)
    return tab, ParticlePoses.from_table(tab, pixel_size_A=2.0)


def test_poses_from_a_table_and_their_priors():
    tab, poses = _poses()
    np.testing.assert_array_equal(poses.offsets_A[:, 0], 1.0)
    np.testing.assert_array_equal(poses.offsets_A[:, 1:], 0.0)   # missing columns read as zeros
    np.testing.assert_array_equal(poses.origins_px[:, 0], 0.5)
    global_with_prior = Sampling(healpix_order=1, sigma_tilt=10.0)
    np.testing.assert_array_equal(poses.prior_angles(global_with_prior)[:, 1], 80.0)
    np.testing.assert_array_equal(poses.prior_angles(Sampling(healpix_order=1))[:, 1], 90.0)
    local = Sampling(healpix_order=4, sigma_tilt=10.0, sigma_rot=5.0, sigma_psi=5.0)
    np.testing.assert_array_equal(poses.prior_angles(local)[:, 1], 90.0)
    assert ParticlePoses.from_table(_poses(tilt_prior=False)[0], 2.0).tilt_prior is None


def test_apply_changes_table_and_state():
    tab, poses = _poses()
    before = poses.copy_poses()
    res = BatchResult(rot=np.array([10.0, 20.0]), tilt=np.array([90.0, 90.0]), psi=np.zeros(2),
                      shift_px=np.array([[1.0, 0, 0], [0, 0, 0]]), pmax=np.array([0.5, 0.7]),
                      n_significant=np.array([3, 4]), log_likelihood=np.array([-1.0, -2.0]),
                      sigma2_num=np.ones(3), sigma2_den=np.full(3, 2.0))
    num, den = np.zeros(3), np.zeros(3)
    rows = np.array([1, 3])
    poses.apply([(rows, res)], num, den)
    np.testing.assert_array_equal(num, 1.0)
    np.testing.assert_array_equal(den, 2.0)
    np.testing.assert_array_equal(poses.offsets_A[rows, 0], [3.0, 1.0])      # + shift · pixel size
    np.testing.assert_array_equal(poses.stats["rlnNrOfSignificantSamples"].to_numpy(), [0, 3, 0, 4])
    angle, offset = poses.changes(rows, before, [np.eye(3)])
    np.testing.assert_allclose(angle, [9.0, 17.0], atol=1e-9)               # about the z axis
    np.testing.assert_allclose(offset, [2.0, 0.0])
    assert change_statistics(angle, offset) == pytest.approx((13.0, 1.0))    # sqrt(4 / (2·2))
    pset = ParticleSet(general={}, optics=pd.DataFrame({"rlnOpticsGroup": [1]}), particles=tab)
    out = poses.particle_set(pset, {"rlnClassNumber": 1, "rlnNormCorrection": 1.0}).particles
    assert list(out.columns)[-5:] == ["rlnClassNumber", "rlnNormCorrection", "rlnLogLikeliContribution",
                                      "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples"]
    restored = ParticlePoses.from_table(tab, 2.0)
    restored.restore(poses.state_arrays(), list(poses.stats.columns))
    np.testing.assert_array_equal(restored.angles, poses.angles)
    pd.testing.assert_frame_equal(restored.stats, poses.stats)


def test_saved_state_without_a_tilt_prior_round_trips_through_npz(tmp_path):
    """VDAM's usual case: no rlnAngleTiltPrior column. The state must save (npz without pickles)
    and restore with the prior still absent."""
    tab, poses = _poses(tilt_prior=False)
    poses = ParticlePoses.from_table(tab, 2.0)
    assert poses.tilt_prior is None
    path = tmp_path / "state.npz"
    np.savez(path, **poses.state_arrays())
    with np.load(path, allow_pickle=False) as arrays:
        restored = ParticlePoses.from_table(tab, 2.0)
        restored.restore(dict(arrays), list(poses.stats.columns))
    assert restored.tilt_prior is None
    np.testing.assert_array_equal(restored.angles, poses.angles)
    with_prior = _poses()[1]
    again = ParticlePoses.from_table(_poses()[0], 2.0)
    again.restore(with_prior.state_arrays(), list(with_prior.stats.columns))
    np.testing.assert_array_equal(again.tilt_prior, with_prior.tilt_prior)
