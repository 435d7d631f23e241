"""The parameter-sweep widget, headless: choosing fields and values, validation, Run, table and plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import subtomo_nb.jobs.jobdir as jobdir
from subtomo_nb.io import read_star, write_star
from subtomo_nb.jobs import EXIT_SUCCESS, Progress, get_job_type, read_job
from subtomo_nb.widgets.forms import JobForm
from subtomo_nb.widgets.sweep import SweepWidget, parse_values, sweepable

distributed = pytest.importorskip("distributed")

WAIT_S = 120.0
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A project with one particle file (3 particles at the origin of their boxes)."""
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [5.0], "rlnImageSize": [32], "rlnImageDimensionality": [3]})
    particles = pd.DataFrame({
        "rlnTomoName": ["TS_01"] * 3, "rlnTomoParticleName": [f"TS_01/{i}" for i in (1, 2, 3)],
        "rlnCenteredCoordinateXAngst": [0.0, 100.0, -50.0], "rlnCenteredCoordinateYAngst": [0.0, 0.0, 20.0],
        "rlnCenteredCoordinateZAngst": [0.0, 10.0, 0.0],
        "rlnAngleRot": [0.0, 0.0, 0.0], "rlnAngleTilt": [0.0, 0.0, 0.0], "rlnAnglePsi": [0.0, 0.0, 0.0],
        "rlnOriginXAngst": [0.0] * 3, "rlnOriginYAngst": [0.0] * 3, "rlnOriginZAngst": [0.0] * 3,
        "rlnOpticsGroup": [1] * 3})
    (tmp_path / "data").mkdir()
    write_star(tmp_path / "data" / "particles.star", {"optics": optics, "particles": particles})
    write_star(tmp_path / "data" / "tomograms.star", {"global": pd.DataFrame({"rlnTomoName": ["TS_01"]})},
               check_labels=False)
    return tmp_path


@pytest.fixture()
def client():
    """An in-process dask cluster (threads), so that monkeypatched run functions are seen."""
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


def test_parse_values() -> None:
    jt = get_job_type("refine3d")
    assert parse_values(jt.param("ini_high"), "30, 40,50") == [30.0, 40.0, 50.0]
    assert parse_values(jt.param("ini_high"), "20:60:10") == [20.0, 30.0, 40.0, 50.0, 60.0]
    assert parse_values(jt.param("ini_high"), "0.5:0.1:-0.2") == [0.5, 0.3, 0.1]
    assert parse_values(jt.param("nr_pool"), "1:5:2") == [1, 3, 5]
    assert all(isinstance(v, int) for v in parse_values(jt.param("nr_pool"), "2, 4"))
    assert parse_values(jt.param("sym_name"), "C1, C6, C6") == ["C1", "C6"]
    assert parse_values(jt.param("auto_faster"), "Yes, No") == [True, False]
    assert parse_values(jt.param("sampling"), "15 degrees, 7.5 degrees") == ["15 degrees", "7.5 degrees"]
    for key, text, match in (("ini_high", "", "values to try"), ("ini_high", "40, abc", "ini_high"),
                             ("ini_high", "60:20:10", "does not go"), ("ini_high", "1:2", "start:stop:step"),
                             ("nr_pool", "1.5", "whole number"), ("sampling", "2 degrees", "not one of"),
                             ("ini_high", "0:1e6:1", "too many")):
        with pytest.raises(ValueError, match=match):
            parse_values(jt.param(key), text)


def test_rows_size_and_prefill(project: Path) -> None:
    w = SweepWidget("refine3d", project, base={"ini_high": 45.0})
    keys = [v for _, v in w.params[0].options]
    assert keys[0] == "" and set(keys[1:]) == {p.key for p in sweepable("refine3d")}
    assert "fn_ref" not in keys and "nr_threads" not in keys and "ini_high" in keys
    w.params[0].value = "ini_high"
    assert w.values[0].value == "45"  # prefilled with the base value
    assert "0-200" in w.hints[0].value
    w.values[0].value = "30, 40, 50"
    w.params[1].value = "particle_diameter"
    w.values[1].value = "200, 230"
    assert w.size.value == "3 × 2 = 6 jobs"
    assert w.ranges() == {"ini_high": [30.0, 40.0, 50.0], "particle_diameter": [200.0, 230.0]}
    w.params[1].value = ""
    assert w.values[1].value == "" and w.size.value == "3 = 3 jobs"
    w.set_sweep({"sym_name": ["C1", "C6"], "auto_faster": "Yes, No"})
    assert w.ranges() == {"sym_name": ["C1", "C6"], "auto_faster": [True, False]} and w.params[2].value == ""
    with pytest.raises(KeyError, match="fn_ref"):
        w.set_sweep({"fn_ref": ["a.mrc"]})


def test_bad_values_are_shown_and_start_nothing(project: Path) -> None:
    w = SweepWidget("recentre", project, base={"fn_in": "data/particles.star"}, client=object())
    w.set_sweep({"center_z": "1, two"})
    assert not w.run()
    assert w.state == "invalid" and "nothing was started" in w.status.value
    assert "center_z" in w.messages[0].value and "#c00000" in w.messages[0].value
    w.set_sweep({})
    assert not w.run() and "at least one" in w.status.value
    w.params[0].value = "center_z"
    w.params[1].value = "center_z"
    assert not w.run() and "already swept" in w.messages[1].value
    assert not (project / "Select").exists()


def test_invalid_job_values_start_nothing(project: Path, client) -> None:
    # the base lacks the input file: run_sweep's validation refuses every grid point before running
    w = SweepWidget("recentre", project, client=client)
    w.set_sweep({"center_z": [1.0, 2.0]})
    assert w.run() and w.wait(WAIT_S)
    assert w.state == "invalid" and "fn_in" in w.status.value
    assert w.table_html.value.count("not run") == 2
    assert not (project / "Select").exists()


def test_run_fills_table_and_plot(project: Path, client, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_refine(values, job_dir, *, project_dir, progress, client=None):
        res = values["ini_high"] / 2 + (5.0 if values["sym_name"] == "C1" else 0.0)
        shells = np.arange(9)
        progress(Progress(iteration=1, resolution_A=res, fsc=list(np.clip(1.1 - shells * 40 / res / 8, 0, 1))))

    monkeypatch.setattr(jobdir, "resolve_run_function", lambda dotted: fake_refine)
    # the fake refine reads nothing: skip reading the stand-in files (no images, a STAR file as "map")
    import importlib

    monkeypatch.setattr(importlib.import_module("subtomo_nb.jobs.validate"), "check_inputs", lambda *a, **k: None)
    form = JobForm("refine3d", project, values={"use_direct_entries": True, "in_particles": "data/particles.star",
                                                "in_tomograms": "data/tomograms.star", "fn_ref": "data/particles.star", "particle_diameter": 100})
    w = SweepWidget("refine3d", project, base=form, client=client)
    w.set_sweep({"ini_high": "30:50:10", "sym_name": "C1, C6"})
    form.fields["offset_range"].value = 7.0  # the form's values at Run time are the base
    assert w.run() and w.wait(WAIT_S), w.status.value
    assert w.state == "finished", w.status.value
    t = w.result.table
    assert list(zip(t["ini_high"], t["sym_name"])) == [(a, b) for a in (30.0, 40.0, 50.0) for b in ("C1", "C6")]
    np.testing.assert_allclose(t["resolution_A"], [20, 15, 25, 20, 30, 25])
    assert "6 of 6 jobs succeeded" in w.status.value and "best 15.00 Å (ini_high=30, sym_name=C6)" in w.status.value
    html = w.table_html.value
    assert html.count("<tr") == 1 + 6 and "15.00" in html and "queued" not in html
    assert bytes(w.plot_image.value)[:8] == PNG
    for job in t["job_dir"]:
        d = project / job
        assert (d / EXIT_SUCCESS).is_file()
        assert read_job(d).values["offset_range"] == 7.0
    assert not w.run_button.disabled


def test_real_recentre_sweep(project: Path, client) -> None:
    """The real run function: one re-centred particle file per Z value, each moved by its own offset."""
    w = SweepWidget("recentre", project, base={"fn_in": "data/particles.star", "angpix": 5.0}, client=client)
    w.set_sweep({"center_z": "1:3:1"})
    assert w.run() and w.wait(WAIT_S) and w.state == "finished", w.status.value
    t = w.result.table
    assert list(t["center_z"]) == [1.0, 2.0, 3.0] and (t["status"] == "succeeded").all()
    assert t["resolution_A"].isna().all()  # re-centring reports no resolution
    z = []
    for job in t["job_dir"]:
        p = read_star(project / job / "particles.star")["particles"]
        z.append(p["rlnCenteredCoordinateZAngst"].to_numpy(float) - p["rlnOriginZAngst"].to_numpy(float))
    # each job's Z shift is its own center_z (px) x 5 Å, the same for all three particles
    steps = np.diff(np.array(z), axis=0)
    assert np.allclose(np.abs(steps), 5.0)
