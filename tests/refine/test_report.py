"""The closing lines of an auto-refine: why it stopped, Nyquist, warnings, next step."""

from __future__ import annotations

from subtomo_nb.refine.report import at_nyquist, stop_report


def _event(**kw):
    base = dict(reason="converged", iteration=8, auto_iter_max=999, fine_step_deg=0.9375, acc_rot_deg=2.17,
                has_fine_enough_sampling=True, nr_iter_wo_resol_gain=1, nr_iter_wo_hidden_changes=0,
                auto_ignore_angles=True, change_orientations_deg=1.12, change_offsets_A=1.21,
                resolution_A=28.8, pixel_size_A=10.8, fsc_at_nyquist=0.186, ini_high_A=50.0)
    base.update(kw)
    return base


def test_converged_run_names_relions_criteria_with_numbers():
    lines = stop_report(_event())
    assert lines[0].startswith("stopped: converged after iteration 7")
    assert "0.94° is finer than 0.75 × the angular accuracy 2.17° = 1.63°" in lines[0]
    assert "1 iteration without resolution gain (RELION needs 1)" in lines[0]
    assert "--auto_ignore_angles" in lines[0]
    assert lines[1] == ("final resolution 28.80 Å (gold-standard FSC 0.143); Nyquist is 21.60 Å (pixel 10.80 Å), "
                        "FSC at Nyquist 0.186")
    # FSC still above 0.143 at Nyquist: the pixel size limits it; the next step is a smaller binning
    assert "limited by the pixel size" in lines[2] and "--bin 2" in lines[2]
    assert not any("WARNING" in x for x in lines)


def test_iteration_limit_and_pose_changes_are_reported():
    lines = stop_report(_event(reason="iteration limit", iteration=2, auto_iter_max=2, auto_ignore_angles=False,
                               fine_step_deg=15.0, acc_rot_deg=8.6, has_fine_enough_sampling=False,
                               nr_iter_wo_resol_gain=0, nr_iter_wo_hidden_changes=0, resolution_A=34.56,
                               fsc_at_nyquist=0.01))
    assert lines[0].startswith("stopped: the iteration limit (--auto_iter_max 2) was reached before convergence")
    assert "15.00° is not finer than 0.75 × the angular accuracy 8.60° = 6.45°" in lines[0]
    assert "0 iterations without large changes of the poses (RELION needs 1; last change 1.12°, 1.21 Å)" in lines[0]
    assert "next step" in lines[-1] and "star-handler" in lines[-1]


def test_a_result_no_better_than_its_start_says_so():
    lines = stop_report(_event(resolution_A=54.0, fsc_at_nyquist=0.0))
    assert any(x.startswith("WARNING: the final resolution 54.00 Å is no better than the reference's initial "
                            "low-pass 50 Å") for x in lines)
    assert not any("next step" in x for x in lines)


def test_nyquist():
    assert at_nyquist(21.6, 10.8) and not at_nyquist(28.8, 10.8, 0.1) and at_nyquist(28.8, 10.8, 0.2)
