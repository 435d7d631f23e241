"""compare.symmetry_axes_error_deg: the point group's axes after a superposition."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.geometry.euler import rotation_about_axis
from subtomo_nb.initial_model.compare import symmetry_axes_error_deg


def test_c6_axis_error_is_the_tilt_of_z():
    assert symmetry_axes_error_deg(rotation_about_axis(2.5, [1, 0, 0]), "C6") == pytest.approx(2.5)
    # a turn about the 6-fold moves no axis of C6
    assert symmetry_axes_error_deg(rotation_about_axis(37.0, [0, 0, 1]), "C6") == pytest.approx(0.0, abs=1e-6)


def test_d2_axes_may_trade_places_but_not_turn():
    # a 90° turn about z swaps the x and y 2-folds: the same set of axes
    assert symmetry_axes_error_deg(rotation_about_axis(90.0, [0, 0, 1]), "D2") == pytest.approx(0.0, abs=1e-6)
    # a small turn about z tilts both in-plane 2-folds by that angle (C6 would not see it)
    assert symmetry_axes_error_deg(rotation_about_axis(4.0, [0, 0, 1]), "D2") == pytest.approx(4.0)
    assert symmetry_axes_error_deg(rotation_about_axis(45.0, [0, 0, 1]), "D2") == pytest.approx(45.0)
    assert symmetry_axes_error_deg(np.eye(3), "C1") == 0.0
