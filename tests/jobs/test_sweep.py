"""Parameter sweeps: grid, validation before anything runs, jobs on a dask cluster, table and plot."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

import subtomo_nb.jobs.jobdir as jobdir
from subtomo_nb.fourier.fsc import resolution
from subtomo_nb.io.star import read_star
from subtomo_nb.jobs import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    JobValidationError,
    Progress,
    read_job,
    read_progress,
    run_job,
)
from subtomo_nb.jobs.sweep import final_fsc, plot_sweep, run_sweep, sweep_grid
from subtomo_nb.simulate import simulate_tiny_project

from ._helpers import write_particles

distributed = pytest.importorskip("distributed")

BOX, PIXEL = 32, 10.8  # the tiny project's particles: bin 4, box 32, 2.7 Å x 4

#: A short auto-refine: the tiny project's truth as reference, 15° sampling, one iteration
#: before the final one (RELION's --auto_iter_max, given as an additional argument).
REFINE_BASE = {"in_optimisation": "Extract/job001/optimisation_set.star", "fn_ref": "ground_truth/map_bin4.mrc",
               "sym_name": "C6", "auto_faster": True, "sampling": "15 degrees", "offset_range": 4,
               "offset_step": 1, "other_args": "--auto_iter_max 1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A noise-free tiny project with its particles extracted (3D, bin 4, box 32) as Extract/job001."""
    root = Path(tmp_path_factory.mktemp("sweep_project"))
    simulate_tiny_project(root, seed=0, snr=None)
    d = run_job("extract", {"in_optimisation": "optimisation_set.star", "binning": 4, "box_size": 32,
                            "do_stack2d": False}, root)
    assert d == root / "Extract" / "job001"
    return root


def test_grid_is_the_product_first_parameter_slowest() -> None:
    grid = sweep_grid({"ini_high": [30, 40, 50], "particle_diameter": [200, 230]})
    assert grid == [{"ini_high": a, "particle_diameter": b} for a in (30, 40, 50) for b in (200, 230)]
    assert sweep_grid({"tau_fudge": [2.0]}) == [{"tau_fudge": 2.0}]
    with pytest.raises(ValueError, match="at least one"):
        sweep_grid({})
    with pytest.raises(ValueError, match="ini_high"):
        sweep_grid({"ini_high": []})
    with pytest.raises(ValueError, match="sym_name"):
        sweep_grid({"sym_name": "C6"})  # a string is not a list of values


def test_invalid_grid_point_starts_nothing(project: Path) -> None:
    before = sorted(p.name for p in project.iterdir())
    # 400 Å does not fit in the 32 x 10.8 = 345.6 Å box: the second grid point is invalid
    with pytest.raises(JobValidationError) as info:
        run_sweep("refine3d", REFINE_BASE, {"particle_diameter": [200, 400]}, project, client=object())
    assert set(info.value.errors) == {"particle_diameter"}
    assert "particle_diameter=400" in info.value.errors["particle_diameter"]
    with pytest.raises(JobValidationError, match="not a field"):
        run_sweep("refine3d", REFINE_BASE, {"no_such_field": [1, 2]}, project, client=object())
    with pytest.raises(JobValidationError, match="ini_high"):
        run_sweep("refine3d", REFINE_BASE, {"ini_high": ["sixty"]}, project, client=object())
    assert sorted(p.name for p in project.iterdir()) == before


def test_refine_sweep_3x2_on_two_workers(project: Path) -> None:
    """Acceptance: a 3 x 2 sweep on a 2-worker LocalCluster returns a table with six final resolutions."""
    ranges = {"ini_high": [30.0, 40.0, 50.0], "particle_diameter": [200.0, 230.0]}
    seen: list[int] = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        result = run_sweep("refine3d", REFINE_BASE, ranges, project, client=client,
                           on_result=lambda i, row: seen.append(i))
        assert client.status == "running"  # a client passed in is left open
    t = result.table
    assert list(t.columns) == ["ini_high", "particle_diameter", "resolution_A", "seconds", "status", "job_dir",
                               "worker"]
    assert list(zip(t["ini_high"], t["particle_diameter"])) == list(itertools.product(*ranges.values()))
    assert sorted(seen) == list(range(6))
    assert (t["status"] == "succeeded").all(), t
    assert t["resolution_A"].notna().sum() == 6
    assert len(set(t["job_dir"])) == 6 and all(j.startswith("Refine3D/job") for j in t["job_dir"])
    assert t["worker"].nunique() == 2  # both workers ran jobs
    assert (t["seconds"] > 0).all()
    for _, row in t.iterrows():
        d = project / row["job_dir"]
        assert (d / EXIT_SUCCESS).is_file() and (d / "run_class001.mrc").is_file()
        # the job ran with the grid point's values, and stopped after one iteration (--auto_iter_max 1)
        values = read_job(d).values
        assert (values["ini_high"], values["particle_diameter"]) == (row["ini_high"], row["particle_diameter"])
        assert values["other_args"] == "--auto_iter_max 1"
        assert [e.iteration for e in read_progress(d) if e.iteration is not None] == [1]
        assert not list(d.glob("run_it002*"))
        # the table's resolution is the job's own final resolution ...
        model = read_star(d / "run_model.star")
        assert row["resolution_A"] == pytest.approx(model["model_general"]["rlnCurrentResolution"])
        # ... between Nyquist and the initial low-pass, and where the stored FSC curve crosses 0.143
        assert 2 * PIXEL - 1e-6 <= row["resolution_A"] <= row["ini_high"]
        curve = result.fsc[row["job_dir"]]
        assert len(curve) == BOX // 2 + 1 and curve["fsc"].iloc[0] == pytest.approx(1.0, abs=1e-3)
        assert row["resolution_A"] == pytest.approx(resolution(curve["fsc"].to_numpy(), BOX, PIXEL))
        assert curve["inv_resolution"].iloc[-1] == pytest.approx(1 / (2 * PIXEL))
    best = result.best()
    assert best["resolution_A"] == t["resolution_A"].min()
    assert result.label(0) == "ini_high=30, particle_diameter=200"
    fig = plot_sweep(result)
    ax_fsc, ax_res = fig.axes[:2]
    assert len(fig.axes) == 3  # FSC curves, resolution, time
    assert len(ax_fsc.get_lines()) == 6 + 1  # six curves and the 0.143 line
    assert len(ax_res.get_lines()) == 2  # one line per particle diameter
    np.testing.assert_allclose(sorted(np.concatenate([ln.get_ydata() for ln in ax_res.get_lines()])),
                               sorted(t["resolution_A"]))


def test_failed_job_is_recorded_and_others_go_on(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an in-process cluster (threads), a run function that fails for one grid point."""
    def fake_recentre(values, job_dir, *, project_dir, progress, client=None):
        if values["center_z"] == 2.0:
            raise RuntimeError("boom")
        progress(Progress(message="done", resolution_A=10.0 + values["center_z"], fsc=[1.0, 0.5, 0.1]))

    monkeypatch.setattr(jobdir, "resolve_run_function", lambda dotted: fake_recentre)
    (project / "data").mkdir(exist_ok=True)
    write_particles(project / "data" / "in.star")  # validation reads the particle table first
    rows: dict[int, dict] = {}
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        result = run_sweep("recentre", {"fn_in": "data/in.star"}, {"center_z": [1.0, 2.0, 3.0]}, project,
                           client=client, on_result=lambda i, row: rows.__setitem__(i, row))
    t = result.table
    assert list(t["status"]) == ["succeeded", "failed", "succeeded"]
    assert t["resolution_A"].iloc[0] == 11.0 and t["resolution_A"].iloc[2] == 13.0
    assert math.isnan(t["resolution_A"].iloc[1])
    assert (project / t["job_dir"].iloc[1] / EXIT_FAILURE).is_file()
    assert "boom" in (project / t["job_dir"].iloc[1] / "run.out").read_text()
    assert rows[1]["status"] == "failed" and set(rows) == {0, 1, 2}
    # FSC from the progress events when the job wrote no FSC table (no 1/Å axis known)
    curve, res = final_fsc(project / t["job_dir"].iloc[0])
    assert res == 11.0 and list(curve["fsc"]) == [1.0, 0.5, 0.1] and curve["inv_resolution"].isna().all()
    fig = result.plot()
    assert len(fig.axes[0].get_lines()) == 2 + 1  # the failed job has no curve


def test_final_fsc_of_a_reconstruction(tmp_path: Path) -> None:
    from subtomo_nb.tasks.reconstruct import _write_fsc

    curve = np.array([1.0, 0.9, 0.5, 0.2, 0.1])
    _write_fsc(tmp_path / "merged_fsc.star", curve, 8, 5.0, 13.33)
    table, res = final_fsc(tmp_path)
    assert res == pytest.approx(13.33)
    np.testing.assert_allclose(table["fsc"], curve)
    np.testing.assert_allclose(table["inv_resolution"], np.arange(5) / 40.0)
    empty, nothing = final_fsc(tmp_path / "missing")
    assert empty is None and math.isnan(nothing)
