"""The closing lines of an auto-refine: why it stopped, Nyquist, warnings, next step."""

from __future__ import annotations

from subtomo_nb.refine.report import at_nyquist, stop_report


def _event(**kw):
    base = dict(reason="converged", iteration=8, auto_iter_max=999, fine_step_deg=0.9375, acc_rot_deg=2.17,
                has_fine_enough_sampling=True, nr_iter_wo_resol_gain=1, nr_iter_wo_hidden_changes=0,
                auto_ignore_angles=True, change_orientations_deg=1.12, change_offsets_A=1.21,
                resolution_A=21.6, pixel_size_A=10.8, fsc_at_nyquist=0.186, ini_high_A=50.0, box=32, binning=4.0,
                job_dir="Refine3D/job004")
    base.update(kw)
    return base


def test_converged_run_names_relions_criteria_with_numbers():
    lines = stop_report(_event())
    assert lines[0].startswith("stopped: converged after iteration 7")
    assert "0.94° is finer than 0.75 × the angular accuracy 2.17° = 1.63°" in lines[0]
    assert "1 iteration without resolution gain (RELION needs 1)" in lines[0]
    assert "--auto_ignore_angles" in lines[0]
    assert lines[1] == ("final resolution 21.60 Å (gold-standard FSC 0.143); Nyquist is 21.60 Å (pixel 10.80 Å): "
                        "the map is at Nyquist; FSC at Nyquist 0.186")
    # FSC above 0.143 up to Nyquist: the pixel size limits it; the next step is half the binning, twice the box
    assert lines[2].startswith("next step: the pixel size limits the map")
    assert ("subtomo extract --ios Refine3D/job004/run_optimisation_set.star --bin 2 --b 64" in lines[2]
            and "refine from Refine3D/job004/run_class001.mrc" in lines[2])
    assert not any("WARNING" in x for x in lines)


def test_one_shell_short_of_nyquist_is_not_called_nyquist():
    """28.8 Å at a 10.8 Å pixel (box 32): one noisy shell above 0.143 at Nyquist does not make it Nyquist-limited."""
    lines = stop_report(_event(resolution_A=28.8, fsc_at_nyquist=0.186))
    assert "the map is at Nyquist" not in lines[1]
    assert lines[2].startswith("next step: look at Refine3D/job004/run_class001.mrc")


def test_unbinned_data_at_nyquist_are_not_told_to_extract_again():
    line = stop_report(_event(binning=1.0))[2]
    assert "extract" not in line and "Nyquist limit of unbinned data" in line


def test_iteration_limit_and_pose_changes_are_reported():
    lines = stop_report(_event(reason="iteration limit", iteration=2, auto_iter_max=2, auto_ignore_angles=False,
                               fine_step_deg=15.0, acc_rot_deg=8.6, has_fine_enough_sampling=False,
                               nr_iter_wo_resol_gain=0, nr_iter_wo_hidden_changes=0, resolution_A=34.56,
                               fsc_at_nyquist=0.01))
    assert lines[0].startswith("stopped: the iteration limit (--auto_iter_max 2) was reached before convergence")
    assert "15.00° is not finer than 0.75 × the angular accuracy 8.60° = 6.45°" in lines[0]
    assert "0 iterations without large changes of the poses (RELION needs 1; last change 1.12°, 1.21 Å)" in lines[0]
    assert "iteration 2 was the final one" in lines[0]
    assert "next step" in lines[-1] and "star-handler" in lines[-1]


def test_a_result_no_better_than_its_start_says_so():
    lines = stop_report(_event(resolution_A=54.0, fsc_at_nyquist=0.0))
    assert any(x.startswith("WARNING: the final resolution 54.00 Å is no better than the reference's initial "
                            "low-pass 50 Å") for x in lines)
    assert not any("next step" in x for x in lines)


def test_nyquist():
    assert at_nyquist(21.6, 10.8) and not at_nyquist(23.04, 10.8) and not at_nyquist(28.8, 10.8)


def test_sampling_met_earlier_is_not_claimed_as_finer_now():
    line = stop_report(_event(fine_step_deg=1.875, acc_rot_deg=2.17, has_fine_enough_sampling=True))[0]
    assert "1.88° is not finer than 0.75 × the angular accuracy 2.17° = 1.63° (it was in an earlier iteration" in line
