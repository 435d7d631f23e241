"""Auto-sampling's translation rule (RELION's updateAngularSampling, offsets in Å), and the
batch's orientation prior."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from subtomo_nb.geometry.healpix import angular_step, direction_vectors
from subtomo_nb.refine.sampling import (
    Sampling,
    batch_orientation_prior,
    batch_rotations,
    finer_translations,
    log_orientation_prior,
)

PIX = 10.8


def test_step_halves_and_range_follows_the_offset_changes() -> None:
    # 2 px step, 6 px range; accuracy 3 Å: min(1.5 Å, 2.25 Å) * 2 = 3 Å < half the step (10.8 Å)
    step, rng = finer_translations(2 * PIX, 6 * PIX, 3.0, 2.8)
    assert step == pytest.approx(PIX)
    assert rng == pytest.approx(1.5 * PIX)          # 3 * 2.8 Å = 8.4 Å is below 1.5 steps


def test_the_1_5_cap_is_in_angstrom_not_pixels() -> None:
    # A poor accuracy (40 Å) gives at most 1.5 Å * 2 = 3 Å, so the step halves (5.4 Å). Read in
    # pixels the cap would give 3 px (32.4 Å), coarser than the current step, and nothing changes.
    step, rng = finer_translations(PIX, 1.5 * PIX, 40.0, 30.0)
    assert step == pytest.approx(PIX / 2)
    assert rng == pytest.approx(1.3 * 1.5 * PIX)    # 3 * 30 Å capped at 1.3x the current range


def test_wide_range_is_halved_then_the_step_raised() -> None:
    # range 3 * 100 Å, capped at 1.3 * 200 Å = 260 Å; > 4 steps (4 * 5.4 Å) so halved to 130 Å,
    # still > 4 steps so the step becomes 130 / 4 = 32.5 Å: coarser than 10.8 Å, the old sampling stays
    assert finer_translations(PIX, 200.0, 1.0, 100.0) == (PIX, 200.0)
    # 4 px step halved to 21.6 Å; range 3 * 10 Å = 30 Å is raised to 1.5 steps (32.4 Å)
    step, rng = finer_translations(4 * PIX, 60.0, 1.0, 10.0)
    assert (step, rng) == pytest.approx((2 * PIX, 32.4))


@pytest.mark.parametrize("sigmas", [dict(), dict(sigma_tilt=10.0), dict(sigma_psi=12.0),
                                    dict(sigma_rot=7.5, sigma_tilt=7.5, sigma_psi=7.5),
                                    dict(sigma_rot=3.0, sigma_tilt=3.0, sigma_psi=3.0)])
def test_factorised_batch_prior_equals_the_dense_prior(sigmas) -> None:
    """Direction × psi factors joined on the reachable orientations = the dense (P, R) prior."""
    s = Sampling(healpix_order=3, sym="C6", **sigmas)
    rot, tilt, psi, pix = s.coarse_grid()
    rng = np.random.default_rng(3)
    prior = np.stack([rng.uniform(-180, 180, 9), rng.uniform(0, 180, 9), rng.uniform(-180, 180, 9)], axis=1)
    dense = log_orientation_prior(s, rot, tilt, psi, *prior.T)
    ridx, logp = batch_orientation_prior(s, s.grid(), *prior.T)
    np.testing.assert_array_equal(ridx, batch_rotations(dense))
    np.testing.assert_allclose(logp, dense[:, ridx], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isfinite(logp), np.isfinite(dense[:, ridx]))
    g = s.grid()
    for got, want in zip(g.angles(ridx), (rot[ridx], tilt[ridx], psi[ridx], pix[ridx])):
        np.testing.assert_array_equal(got, want)


def test_a_prior_that_excludes_everything_keeps_the_nearest_orientation() -> None:
    s = Sampling(healpix_order=2, sym="C1", sigma_psi=0.5)   # 3σ = 1.5° between psi samples 7.5° apart
    rot, tilt, psi, _ = s.coarse_grid()
    prior = np.array([[10.0, 50.0, 3.7], [0.0, 90.0, 0.5]])
    dense = log_orientation_prior(s, rot, tilt, psi, *prior.T)
    ridx, logp = batch_orientation_prior(s, s.grid(), *prior.T)
    np.testing.assert_array_equal(ridx, batch_rotations(dense))
    np.testing.assert_allclose(logp, dense[:, ridx])
    assert np.isfinite(logp[0]).sum() == 1


def test_local_search_at_order_7_needs_memory_for_its_neighbourhoods_only() -> None:
    """HEALPix order 7 in C6 has ~25 million orientations (the whole grid as angles: ~800 MB);
    a batch's local prior touches only its neighbourhoods."""
    sig = 2 * angular_step(7, 1)
    s = Sampling(healpix_order=7, sym="C6", sigma_rot=sig, sigma_tilt=sig, sigma_psi=sig)
    g = s.grid()
    assert len(g) > 20_000_000
    rng = np.random.default_rng(5)
    prior = np.stack([rng.uniform(-180, 180, 16), rng.uniform(20, 160, 16), rng.uniform(-180, 180, 16)], axis=1)
    tracemalloc.start()
    ridx, logp = batch_orientation_prior(s, g, *prior.T)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 300e6, peak
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0)
    rot, tilt, psi, _ = g.angles(ridx)
    v = direction_vectors(rot, tilt)
    for p in range(16):
        ok = np.isfinite(logp[p])
        assert 10 < ok.sum() < 100_000
        # RELION's local search: the direction within 3σ of the prior's closest symmetry mate
        # (C6 about z: the prior direction turned by multiples of 60° in rot), psi within 3σ
        mates = direction_vectors(prior[p, 0] + 60.0 * np.arange(6), np.full(6, prior[p, 1]))
        ang = np.degrees(np.arccos(np.clip((v[ok] @ mates.T).max(axis=1), -1, 1)))
        dpsi = np.abs((psi[ok] - prior[p, 2] + 180.0) % 360.0 - 180.0)
        assert ang.max() <= 3 * sig + 1e-6 and dpsi.max() <= 3 * sig + 1e-6
        # and nothing within those bounds is left out: every grid orientation that meets them is kept
        near_d = np.flatnonzero(np.degrees(np.arccos(np.clip((direction_vectors(g.rot, g.tilt) @ mates.T).max(axis=1),
                                                             -1, 1))) <= 3 * sig)
        near_j = np.flatnonzero(np.abs((g.psi - prior[p, 2] + 180.0) % 360.0 - 180.0) <= 3 * sig)
        assert ok.sum() == len(near_d) * len(near_j)


def test_coarse_radius_follows_relions_coarse_size():
    """coarse_size = 2 ceil(pix·box / (step/360 · π · D / 1.2)), at most the current size (§6.8)."""
    from subtomo_nb.refine.sampling import coarse_radius

    # 30° at 230 Å: 60.2 Å / 1.2 = 50.2 Å -> 2 ceil(345.6 / 50.2) = 14
    assert coarse_radius(30.0, 230.0, 10.8, 32, 32) == 7.0
    # 15°: 25.1 Å -> 2 ceil(13.8) = 28
    assert coarse_radius(15.0, 230.0, 10.8, 32, 32) == 14.0
    # 7.5°: 12.5 Å -> 56, capped by the box's current size
    assert coarse_radius(7.5, 230.0, 10.8, 32, 32) == 16.0
    assert coarse_radius(7.5, 230.0, 10.8, 32, 20) == 10.0
    # a larger particle's edge moves further per step: a coarser resolution, a smaller radius
    assert coarse_radius(30.0, 460.0, 10.8, 64, 64) == 7.0 < coarse_radius(30.0, 230.0, 10.8, 64, 64) == 14.0
