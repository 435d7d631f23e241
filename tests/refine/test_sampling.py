"""Auto-sampling's translation rule (RELION's updateAngularSampling, offsets in Å)."""

from __future__ import annotations

import pytest

from subtomo_nb.refine.sampling import finer_translations

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
