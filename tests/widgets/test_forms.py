"""The ipywidgets job form, headless: fields from the registry, presets, validation, Run/Stop/Continue."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import ipywidgets as W
import numpy as np
import pandas as pd
import pytest

import subtomo_nb.jobs.jobdir as jobdir
from subtomo_nb.io import write_star
from subtomo_nb.jobs import EXIT_SUCCESS, Progress, get_job_type, read_job, write_job_star
from subtomo_nb.widgets import forms
from subtomo_nb.widgets.forms import JobForm, JobStopped, last_optimiser, matching_files

WAIT_S = 30.0


def write_particles(path: Path, n: int = 4, *, box: int = 32, pixel: float = 5.0) -> Path:
    """A tiny particle STAR file: optics (group, pixel, box, 3D) and particles with angles and origins."""
    rng = np.random.default_rng(1)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [pixel], "rlnImageSize": [box], "rlnImageDimensionality": [3]})
    particles = pd.DataFrame({
        "rlnTomoName": ["TS_01"] * n,
        "rlnTomoParticleName": [f"TS_01/{i + 1}" for i in range(n)],
        "rlnAngleRot": rng.uniform(-180, 180, n),
        "rlnAngleTilt": rng.uniform(0, 180, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n),
        "rlnOriginXAngst": np.zeros(n),
        "rlnOriginYAngst": np.zeros(n),
        "rlnOriginZAngst": np.zeros(n),
        "rlnOpticsGroup": [1] * n,
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    write_star(path, {"optics": optics, "particles": particles})
    return path


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    write_particles(tmp_path / "data" / "particles.star")
    (tmp_path / "Tomograms").mkdir()
    write_star(tmp_path / "Tomograms" / "tomograms.star",
               {"global": pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnTomoTiltSeriesPixelSize": [1.35]})},
               check_labels=False)
    return tmp_path


@pytest.mark.parametrize("name", ["refine3d", "initial_model"])
def test_every_parameter_has_a_widget_with_label_and_default(project: Path, name: str) -> None:
    jt = get_job_type(name)
    form = JobForm(name, project)
    assert [form.tab.get_title(i) for i in range(len(form.tab.children))] == list(jt.tabs)
    assert set(form.fields) == set(jt.keys())
    for p in jt.params:
        widget = form.fields[p.key]
        assert widget.value == p.default_value(), p.key
        assert p.label.strip() in widget.description, p.key
        assert widget.tooltip == p.help
        page = form.tab.children[jt.tabs.index(p.tab)]
        assert any(widget in row.children or widget in getattr(row.children[0], "children", ())
                   for row in page.children), p.key
        if p.type == "bool":
            assert isinstance(widget, W.Checkbox)
        elif p.type == "choice":
            assert isinstance(widget, W.Dropdown) and tuple(widget.options) == p.choices
        elif p.type == "file":
            assert isinstance(widget, W.Text) and p.key in form.choosers
        elif p.type in ("int", "float") and p.strict_range and p.min is not None and p.max is not None:
            assert (widget.min, widget.max) == (p.min, p.max)
    assert form.values == jt.defaults()


def test_widgets_change_values_and_file_picker(project: Path) -> None:
    form = JobForm("refine3d", project)
    form.fields["ini_high"].value = 45.0
    form.fields["sym_name"].value = "D2"
    form.fields["sampling"].value = "3.7 degrees"
    form.fields["do_ctf_correction"].value = False
    form.fields["nr_pool"].value = 40  # beyond RELION's slider, not a strict range: kept
    v = form.values
    assert (v["ini_high"], v["sym_name"], v["sampling"], v["do_ctf_correction"], v["nr_pool"]) == \
        (45.0, "D2", "3.7 degrees", False, 40)
    assert isinstance(v["nr_pool"], int) and isinstance(v["ini_high"], float)
    # active_if greys out dependent fields
    assert form.fields["ctf_intact_first_peak"].disabled
    assert form.fields["in_particles"].disabled
    form.fields["use_direct_entries"].value = True
    assert not form.fields["in_particles"].disabled
    # the file picker offers project files matching the field's pattern and fills the text
    chooser = form.choosers["in_particles"]
    assert "data/particles.star" in [value for _, value in chooser.options]
    chooser.value = "data/particles.star"
    assert form.values["in_particles"] == "data/particles.star"
    form.set_values({"particle_diameter": "150", "auto_faster": "Yes"})
    assert form.values["particle_diameter"] == 150.0 and form.values["auto_faster"] is True
    with pytest.raises(KeyError):
        form.set_values({"no_such_key": 1})
    with pytest.raises(ValueError):
        form.set_values({"sampling": "2 degrees"})
    assert matching_files(project, "*.{star,mrc}") == ["Tomograms/tomograms.star", "data/particles.star"]


def test_tutorial_presets(project: Path) -> None:
    refine = JobForm("refine3d", project)
    refine.load_preset("tutorial")
    v = refine.values
    assert (v["ini_high"], v["sym_name"], v["particle_diameter"], v["auto_faster"]) == (50.0, "C6", 230.0, True)
    ini = JobForm("initial_model", project)
    ini.load_preset("tutorial")
    v = ini.values
    assert (v["nr_iter"], v["tau_fudge"], v["nr_classes"], v["particle_diameter"], v["sym_name"],
            v["sigma_tilt"]) == (100, 4.0, 1, 230.0, "C6", 10.0)
    ini.load_preset("defaults")
    assert ini.values == get_job_type("initial_model").defaults()
    with pytest.raises(KeyError, match="tutorial"):
        ini.load_preset("nonsense")


def test_initial_model_form_has_the_fast_search_field(project: Path) -> None:
    """subtomo_nb's "Fast search" (--fast): a checkbox on the Optimisation tab, No by default, its help the tooltip."""
    jt = get_job_type("initial_model")
    form = JobForm("initial_model", project)
    box = form.fields["do_fast"]
    assert isinstance(box, W.Checkbox) and box.value is False and form.values["do_fast"] is False
    assert box.description == "Fast search (subtomo_nb, not RELION)?"
    assert "not a RELION option" in box.tooltip and "frequency marching" in box.tooltip
    page = form.tab.children[jt.tabs.index("Optimisation")]
    assert any(box in row.children for row in page.children)
    form.load_preset("tutorial")                       # the tutorial's preset is RELION's job
    assert form.values["do_fast"] is False
    form.set_values({"do_fast": True})
    assert form.values["do_fast"] is True


def test_invalid_values_are_shown_and_start_nothing(project: Path) -> None:
    form = JobForm("refine3d", project)
    form.load_preset("tutorial")  # 230 Å mask > box of 32 px x 5 Å = 160 Å
    form.set_values({"use_direct_entries": True, "in_particles": "data/particles.star",
                     "in_tomograms": "Tomograms/tomograms.star", "fn_ref": "data/particles.star",
                     "sym_name": "X7"})
    errors = form.validate()
    assert set(errors) == {"particle_diameter", "sym_name"}
    assert "160" in errors["particle_diameter"]
    assert "larger than the particle box" in form.messages["particle_diameter"].value
    assert "X7" in form.messages["sym_name"].value and "color:#c00000" in form.messages["sym_name"].value
    assert form.messages["ini_high"].value == ""
    # the message sits right under its field, on the field's tab
    page = form.tab.children[get_job_type("refine3d").tabs.index("Reference")]
    assert any(form.messages["sym_name"] in row.children for row in page.children)
    form.run_button.click()
    assert form.state == "invalid" and "nothing was started" in form.status.value
    assert not (project / "Refine3D").exists()
    # fixing the values clears the messages
    form.set_values({"particle_diameter": 150, "sym_name": "C6"})
    errors = form.validate()
    assert form.messages["sym_name"].value == ""
    # the values pass; then the inputs are read as the job would: this stand-in table has no images
    assert list(errors) == ["in_particles"]
    assert errors["in_particles"].endswith("particles.star: field rlnImageName: required column missing from data_particles")


def test_run_recentre_in_background(project: Path) -> None:
    form = JobForm("recentre", project, values={"fn_in": "data/particles.star", "center_z": 2.0})
    form.run_button.click()
    assert form.wait(WAIT_S), "job did not finish"
    job = project / "Select" / "job001"
    assert form.state == "finished", form.status.value
    assert "finished" in form.status.value and "Select/job001/" in form.status.value
    for name in ("job.star", "note.txt", "run.out", "particles.star", EXIT_SUCCESS):
        assert (job / name).is_file(), name
    assert form.job_dir == job
    assert form.events and "re-centring" in form.log.value
    assert not form.run_button.disabled and form.stop_button.disabled
    assert read_job(job).values["center_z"] == 2.0
    # re-open it: same values; recentre cannot be continued; Run copies it into job002
    again = JobForm.from_job(job)
    assert again.values == form.values and not again.can_continue() and again.continue_button.disabled
    again.run()
    assert again.wait(WAIT_S) and again.state == "finished" and (project / "Select" / "job002" / EXIT_SUCCESS).is_file()


def test_progress_event_logged_and_fsc_plotted(project: Path) -> None:
    pytest.importorskip("matplotlib")
    form = JobForm("refine3d", project)
    shells = np.arange(1, 17)
    event = Progress(message="E-step done", iteration=3, resolution_A=21.5,
                     fsc=list(np.clip(1.2 - shells / 10, 0, 1)), fsc_resolution_A=list(160 / shells),
                     accuracy_rot_deg=4.2, accuracy_trans_A=1.5, timings={"E-step": 2.0})
    t = threading.Thread(target=form.post_progress, args=(event,))
    t.start()
    t.join(WAIT_S)
    assert "iteration 3" in form.log.value and "21.50 Å" in form.log.value
    assert "angular accuracy 4.20°" in form.log.value and "E-step 2.0 s" in form.log.value
    png = bytes(form.fsc_image.value)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    form.post_progress(Progress(iteration=4, fsc=[1.0, 0.8, 0.3, 0.1]))
    assert bytes(form.fsc_image.value) != png and "iteration 4" in form.log.value


def test_stop_aborts_at_next_progress_event(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = threading.Event()

    def slow_job(values, job_dir, *, project_dir, progress, client=None):  # noqa: ANN001, ANN202
        for i in range(2000):
            progress(Progress(iteration=i, message="working"))
            first.set()
            time.sleep(0.01)
        raise AssertionError("the stop flag was not honoured")

    monkeypatch.setattr(jobdir, "resolve_run_function", lambda dotted: slow_job)
    form = JobForm("recentre", project, values={"fn_in": "data/particles.star"})
    assert form.run()
    assert first.wait(WAIT_S)
    assert form.running and not form.stop_button.disabled
    form.stop_button.click()
    assert form.wait(WAIT_S)
    assert form.state == "stopped" and isinstance(form.error, JobStopped)
    assert (project / "Select" / "job001" / jobdir.EXIT_ABORTED).is_file()
    assert "stopped" in form.status.value


class _CtrlCOnFirstJoin:
    """Stands in for the form's thread: the first ``join`` is interrupted as Ctrl-C in a notebook is."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread, self.joins = thread, 0

    def join(self, timeout: float | None = None) -> None:
        self.joins += 1
        if self.joins == 1:
            raise KeyboardInterrupt
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()


@pytest.mark.parametrize("how", ["stop button", "ctrl-c"])
def test_stop_says_the_iteration_and_offers_to_continue(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                        how: str) -> None:
    """Stop (or Ctrl-C while waiting) after iteration 1: the status names it and Continue is enabled."""
    started = threading.Event()
    job = project / "Refine3D" / "job004"

    def fake_run_job(job_type, values, project_dir, *, client=None, progress=None,  # noqa: ANN001, ANN202
                     job_dir=None):
        job.mkdir(parents=True)
        write_job_star(job, "refine3d", values)
        (job / "run_it001_optimiser.star").write_text("")
        for i in range(2000):
            progress(Progress(iteration=1, message="iteration 2 under way"))
            started.set()
            time.sleep(0.01)
        raise AssertionError("the stop was not honoured")

    monkeypatch.setattr(forms, "run_job", fake_run_job)
    monkeypatch.setattr(forms, "validate_values", lambda *a, **k: {})  # the stand-in files are not read here
    form = JobForm("refine3d", project, values={"use_direct_entries": True, "in_particles": "data/particles.star"})
    assert form.run() and started.wait(WAIT_S)
    if how == "stop button":
        form.stop_button.click()
    else:
        form._thread = _CtrlCOnFirstJoin(form._thread)
    assert form.wait(WAIT_S)
    assert form.state == "stopped" and isinstance(form.error, JobStopped)
    assert form.status.value == ("stopped: Refine3D/job004/ (RELION_JOB_EXIT_ABORTED) after iteration 1: "
                                 "press Continue to go on from run_it001_optimiser.star")
    assert not form.continue_button.disabled and not form.run_button.disabled and form.stop_button.disabled


def test_continue_fills_last_optimiser_and_runs_in_place(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = project / "Refine3D" / "job003"
    job.mkdir(parents=True)
    write_job_star(job, "refine3d", {"use_direct_entries": True, "in_particles": "data/particles.star",
                                     "sym_name": "C6"})
    for it in (2, 10, 9):
        (job / f"run_it{it:03d}_optimiser.star").write_text("")
    assert last_optimiser(job).name == "run_it010_optimiser.star"
    calls: list[dict] = []

    def fake_run_job(job_type, values, project_dir, *, client=None, progress=None,  # noqa: ANN001, ANN202
                     job_dir=None):
        calls.append({"fn_cont": values["fn_cont"], "job_dir": job_dir})
        progress(Progress(iteration=11, message="continued"))
        return Path(job_dir)

    monkeypatch.setattr(forms, "run_job", fake_run_job)
    form = JobForm.from_job(job)
    assert form.values["sym_name"] == "C6" and form.can_continue() and not form.continue_button.disabled
    form.continue_button.click()
    assert form.wait(WAIT_S) and form.state == "finished", form.status.value
    assert calls == [{"fn_cont": "Refine3D/job003/run_it010_optimiser.star", "job_dir": job}]
    assert form.values["fn_cont"] == "Refine3D/job003/run_it010_optimiser.star"
    # a form that never ran has nothing to continue
    fresh = JobForm("refine3d", project)
    assert not fresh.continue_job() and fresh.continue_button.disabled


def test_forms_import_without_qt() -> None:
    import subprocess
    import sys

    code = ("import sys, subtomo_nb.widgets, subtomo_nb.widgets.forms\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy', 'magicgui'})\n"
            "assert not bad, bad\n")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)


def test_particle_counts_drive_a_tqdm_bar_not_the_log(project: Path) -> None:
    """The notebook's progress bar over an iteration's particles (tqdm's widget), a new one per iteration."""
    form = JobForm("refine3d", project)
    for done in (12, 46):
        form.post_progress(Progress(iteration=1, particles_done=done, particles_total=92))
    bar = form.particles_bar.children[0]
    assert bar.children[1].value == 46 and bar.children[1].max == 92 and "iteration\u20071" in bar.children[0].value  # tqdm joins with U+2007
    assert form.events == [] and form.log.value == ""
    form.post_progress(Progress(iteration=2, particles_done=5, particles_total=92))
    assert form.particles_bar.children[0] is not bar and form.particles_bar.children[0].children[1].value == 5
