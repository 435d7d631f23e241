"""Analysis view of a finished job, on a short auto-refine (two iterations) of the tiny simulated project."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star
from subtomo_nb.jobs import EXIT_SUCCESS, read_progress, run_job
from subtomo_nb.simulate import simulate_tiny_project
from subtomo_nb.widgets.analysis import (
    AnalysisView,
    central_slices,
    fsc_curves,
    iteration_table,
    job_map,
    plot_fsc_curves,
)

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def refined(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(project, Refine3D job) : noise-free tiny project, extracted at bin 4, refined for two iterations."""
    root = Path(tmp_path_factory.mktemp("analysis_project"))
    simulate_tiny_project(root, seed=0, snr=None)
    extract = run_job("extract", {"in_optimisation": "optimisation_set.star", "binning": 4, "box_size": 32,
                                  "do_stack2d": False}, root)
    job = run_job("refine3d", {"in_optimisation": f"Extract/{extract.name}/optimisation_set.star",
                               "fn_ref": "ground_truth/map_bin4.mrc", "ini_high": 50, "sym_name": "C6",
                               "particle_diameter": 230, "auto_faster": True, "sampling": "15 degrees",
                               "offset_range": 4, "offset_step": 1, "other_args": "--auto_iter_max 2"}, root)
    assert (job / EXIT_SUCCESS).is_file()
    return root, job


def test_iteration_table_matches_model_stars_and_progress_log(refined: tuple[Path, Path]) -> None:
    _, job = refined
    table = iteration_table(job)
    assert list(table["iteration"]) == [0, 1, 2]
    assert list(table["final"]) == [False, False, True]
    # iteration 0 is the start: the initial low-pass as resolution, accuracies not estimated yet
    assert table["resolution_A"].iloc[0] == 50.0
    assert math.isnan(table["accuracy_rot_deg"].iloc[0]) and math.isnan(table["seconds"].iloc[0])
    final = read_star(job / "run_model.star")
    assert table["resolution_A"].iloc[-1] == pytest.approx(final["model_general"]["rlnCurrentResolution"])
    assert table["accuracy_trans_A"].iloc[-1] == pytest.approx(
        final["model_classes"]["rlnAccuracyTranslationsAngst"].iloc[0])
    assert (table["healpix_order"].iloc[1:] >= 1).all()
    # the run function reported each iteration through progress.jsonl: same numbers, other writer
    events = {e.iteration: e for e in read_progress(job) if e.iteration is not None}
    assert sorted(events) == [1, 2]
    for _, row in table.iloc[1:].iterrows():
        e = events[row["iteration"]]
        assert row["resolution_A"] == pytest.approx(e.resolution_A)
        assert row["accuracy_rot_deg"] == pytest.approx(e.accuracy_rot_deg)
        assert row["accuracy_trans_A"] == pytest.approx(e.accuracy_trans_A)
        assert row["seconds"] == pytest.approx(e.timings["time"])
        assert 21.6 - 1e-6 <= row["resolution_A"] <= 50.0


def test_fsc_curves_per_iteration(refined: tuple[Path, Path]) -> None:
    _, job = refined
    curves = fsc_curves(job)
    assert list(curves) == [1, 2]
    events = {e.iteration: e for e in read_progress(job) if e.iteration is not None}
    for it, curve in curves.items():
        assert len(curve) == 17
        np.testing.assert_allclose(curve["fsc"], events[it].fsc, atol=1e-5)
        np.testing.assert_allclose(curve["inv_resolution"], np.arange(17) / (32 * 10.8), rtol=1e-4)
    fig = plot_fsc_curves(curves)
    assert len(fig.axes[0].get_lines()) == 3  # two iterations and the 0.143 line
    assert job_map(job) == job / "run_class001.mrc"


def test_central_slices_orientation() -> None:
    z, y, x = np.meshgrid(np.arange(4), np.arange(6), np.arange(8), indexing="ij")
    vol = 100 * z + 10 * y + x
    xy, xz, yz = central_slices(vol)
    np.testing.assert_array_equal(xy, 200 + 10 * np.arange(6)[:, None] + np.arange(8)[None, :])
    np.testing.assert_array_equal(xz, 100 * np.arange(4)[:, None] + 30 + np.arange(8)[None, :])
    np.testing.assert_array_equal(yz, 100 * np.arange(4)[:, None] + 10 * np.arange(6)[None, :] + 4)
    with pytest.raises(ValueError):
        central_slices(np.zeros((4, 4)))


def test_analysis_view_of_refine_job(refined: tuple[Path, Path]) -> None:
    _, job = refined
    view = AnalysisView(job)
    assert f"{job.parent.name}/{job.name}/" in view.summary.value and "succeeded" in view.summary.value
    res = read_star(job / "run_model.star")["model_general"]["rlnCurrentResolution"]
    assert f"{res:.2f} Å" in view.summary.value and "2 iteration(s)" in view.summary.value
    assert view.table_html.value.count("<tr") == 1 + 3  # header and three iterations
    for image in (view.fsc_image, view.history_image, view.slices_image):
        assert bytes(image.value)[:8] == PNG
    values = [v for _, v in view.map_choice.options]
    assert values[0] == str(job / "run_class001.mrc")
    assert str(job / "run_it001_half1_class001.mrc") in values and len(values) == 3
    final_png = bytes(view.slices_image.value)
    view.map_choice.value = str(job / "run_it000_half1_class001.mrc")
    assert bytes(view.slices_image.value) != final_png
    # refresh keeps the chosen map
    view.refresh()
    assert view.map_choice.value == str(job / "run_it000_half1_class001.mrc")


def test_analysis_view_of_reconstruction(refined: tuple[Path, Path]) -> None:
    root, job = refined
    rec = run_job("reconstruct", {"use_direct_entries": True, "in_particles": f"Refine3D/{job.name}/run_data.star",
                                  "in_tomograms": "tomograms.star", "sym_name": "C6"}, root)
    view = AnalysisView(rec)
    fsc = read_star(rec / "merged_fsc.star")
    res = fsc["general"]["rlnFinalResolution"]
    assert f"{res:.2f} Å" in view.summary.value
    assert list(view.curves) == [0]
    np.testing.assert_allclose(view.curves[0]["fsc"], fsc["fsc"]["rlnFourierShellCorrelation"])
    assert view.table_html.value == "" and bytes(view.fsc_image.value)[:8] == PNG
    assert [label for label, _ in view.map_choice.options] == ["final (merged.mrc)"]
    volume, _ = read_map(rec / "merged.mrc")
    assert volume.shape == (32, 32, 32)


def test_analysis_view_of_empty_directory(tmp_path: Path) -> None:
    job = tmp_path / "Refine3D" / "job001"
    job.mkdir(parents=True)
    view = AnalysisView(job)
    assert "running" in view.summary.value and "—" in view.summary.value
    assert bytes(view.fsc_image.value) == b"" and bytes(view.slices_image.value) == b""
    assert list(view.map_choice.options) == []
