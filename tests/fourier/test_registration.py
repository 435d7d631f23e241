"""estimate_offset: known offsets (noise-free and with the noise of a bin-4 refinement), its sign
against relion_star_handler --center, and end-to-end re-centring (reconstruct, estimate, re-centre,
reconstruct again)."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.fourier.registration import correlation_at, estimate_offset, mask_like
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star
from subtomo_nb.tasks.reconstruct import reconstruct_particles
from subtomo_nb.tasks.recentre import recentre_table
from subtomo_nb.viewer.session import OffsetSession
from tests.viewer._synthetic import OFFSET, PIXEL_A, shifted, truth_and_mask, write_job

TOL_PX = 0.1


@pytest.fixture(scope="module")
def noisy_job(tmp_path_factory):
    """120 noisy pseudo-subtomograms whose reconstruction sits at OFFSET (FSC 0.5 vs truth ~35 Å)."""
    return write_job(tmp_path_factory.mktemp("noisy"), n=120, noise_sigma=1.0, seed=0)


def test_known_offset_noise_free():
    truth, mask = truth_and_mask()
    est = estimate_offset(shifted(truth, OFFSET), mask)
    np.testing.assert_allclose(est, OFFSET, atol=TOL_PX)
    # a centred map is found centred
    np.testing.assert_allclose(estimate_offset(truth, mask), (0, 0, 0), atol=0.02)


def test_other_offsets_and_sign():
    truth, mask = truth_and_mask()
    for t in [(-2.0, 0.75, -1.5), (1.25, 1.25, 0.0), (0.0, 0.0, -3.25)]:
        np.testing.assert_allclose(estimate_offset(shifted(truth, t), mask), t, atol=TOL_PX)


def test_uncalibrated_score_peaks_at_estimate():
    truth, mask = truth_and_mask()
    m = shifted(truth, OFFSET)
    raw = estimate_offset(m, mask, calibrate=False)
    c0 = correlation_at(m, mask, raw)
    for d in np.eye(3) * 0.25:
        assert correlation_at(m, mask, tuple(np.add(raw, d))) < c0
        assert correlation_at(m, mask, tuple(np.subtract(raw, d))) < c0
    assert 0 < c0 <= 1
    assert correlation_at(m, mask, raw) > correlation_at(m, mask, (0.0, 0.0, 0.0))


def test_mask_like_matches_recipe():
    truth, mask = truth_and_mask()
    own = mask_like(truth, mask)
    assert abs(own.sum() - mask.sum()) < 0.01 * mask.sum()
    assert np.abs(own - mask).max() < 0.35


def test_errors():
    truth, mask = truth_and_mask()
    with pytest.raises(ValueError, match="one shape"):
        estimate_offset(truth, mask[:-1])
    with pytest.raises(ValueError, match="empty"):
        estimate_offset(truth, np.zeros_like(mask))
    with pytest.raises(ValueError, match="pixel_size_A"):
        estimate_offset(truth, mask, lowpass_A=40.0)
    bad = truth.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        estimate_offset(bad, mask)


def test_known_offset_noisy_bin4_refinement(noisy_job):
    """A map reconstructed from noisy particles at OFFSET is found within 0.1 px per axis."""
    m, pix = read_map(noisy_job["map"])
    mask, _ = read_map(noisy_job["mask"])
    assert abs(pix - PIXEL_A) < 1e-3
    est = OffsetSession(m, mask, pix).estimate()  # default low-pass: half Nyquist
    print("noisy estimate (px):", np.round(est, 3), "error:", np.round(np.subtract(est, OFFSET), 3))
    np.testing.assert_allclose(est, OFFSET, atol=TOL_PX)


def test_recentre_end_to_end(noisy_job, tmp_path):
    """Estimate, re-centre (Apply), reconstruct again: the density is at the mask centre (< 0.1 px)."""
    session = OffsetSession.from_paths(noisy_job["map"], noisy_job["mask"], noisy_job["particles"])
    est = session.estimate()
    res = session.apply(write_map_too=True)  # beside the input, so relative image paths resolve
    assert res.star_path.name == "run_data_recentred.star" and res.record_path.is_file()
    # the STAR file changed exactly as recentre_table (relion_star_handler --center) does
    before = read_star(noisy_job["particles"])["particles"]
    after = read_star(res.star_path)["particles"]
    expect = recentre_table(before, est, PIXEL_A)
    for c in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"):
        np.testing.assert_allclose(after[c].to_numpy(float), expect[c].to_numpy(float), atol=1e-5)
    # the re-centred map written beside it is the map moved by -offset
    rm, _ = read_map(res.map_path)
    np.testing.assert_allclose(estimate_offset(rm, session.mask, lowpass_A=4 * PIXEL_A, pixel_size_A=PIXEL_A),
                               (0, 0, 0), atol=TOL_PX)
    # reconstruct from the re-centred particles
    out = tmp_path / "again.mrc"
    reconstruct_particles(res.star_path, out, ctf=True)
    again = OffsetSession.from_paths(out, noisy_job["mask"]).estimate()
    print("offset after re-centring (px):", np.round(again, 3))
    np.testing.assert_allclose(again, (0, 0, 0), atol=TOL_PX)
    # and against the truth directly: the new map correlates best with the centred truth
    truth, _ = truth_and_mask()
    new, _ = read_map(out)
    cc = [float((new * shifted(truth, t)).sum()) for t in [(0, 0, 0), OFFSET]]
    assert cc[0] > cc[1]
