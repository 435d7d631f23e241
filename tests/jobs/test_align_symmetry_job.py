"""The align-symmetry job: model.star input, files, the run function and ``subtomo align-symmetry``."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from subtomo_nb.fourier.filters import fourier_crop
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.model_star import class_maps_from_model
from subtomo_nb.io.mrc import read_map, write_map
from subtomo_nb.io.star import write_star
from subtomo_nb.jobs.align_symmetry import run_align_symmetry_job, run_from_args
from subtomo_nb.simulate.phantom import render_map
from subtomo_nb.tasks.align_symmetry import align_symmetry_file


# ----------------------------------------------------------------------------------------------
# files, job and command line
# ----------------------------------------------------------------------------------------------


def _values(**kw) -> dict:
    from subtomo_nb.jobs import get_job_type

    v = get_job_type("align_symmetry").defaults()
    v.update(do_select_largest_class=False, do_apply_sym=False)
    v.update(kw)
    return v


def _model_star(project, maps: list[str], dist: list[float], resol: list[float]):
    path = project / "InitialModel" / "job001" / "run_it100_model.star"
    write_star(path, {
        "model_general": {"rlnNrClasses": len(maps), "rlnPixelSize": 10.8},
        "model_classes": pd.DataFrame({"rlnReferenceImage": maps, "rlnClassDistribution": dist,
                                       "rlnAccuracyRotations": [5.0] * len(maps),
                                       "rlnEstimatedResolution": resol}),
    })
    return path


@pytest.fixture()
def project(tmp_path):
    """Project with two class maps: class 1 a noise blob, class 2 the C6 phantom (box 32, 10.8 Å)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "InitialModel" / "job001"
    d.mkdir(parents=True)
    blob = fourier_crop(rng.normal(size=(32, 32, 32)).astype(np.float32), 32)
    blob *= np.exp(-((np.indices((32,) * 3) - 16) ** 2).sum(0) / (2 * 6.0**2)).astype(np.float32)
    write_map(d / "run_it100_class001.mrc", blob, 10.8)
    write_map(d / "run_it100_class002.mrc", render_map(32, 10.8), 10.8)
    maps = ["InitialModel/job001/run_it100_class001.mrc", "InitialModel/job001/run_it100_class002.mrc"]
    _model_star(tmp_path, maps, [0.3, 0.7], [20.0, 30.0])
    return tmp_path


def test_run_function_writes_aligned_map_with_the_input_pixel_size(project):
    job = project / "External" / "job002"
    job.mkdir(parents=True)
    events = []
    out = run_align_symmetry_job(_values(fn_in="InitialModel/job001/run_it100_class002.mrc", sym_name="C6",
                                         nr_uniform=60, do_apply_sym=True), job, project_dir=project,
                                 progress=events.append)
    assert out == {"map": job / "aligned.mrc"}
    data, px = read_map(job / "aligned.mrc")
    assert px == pytest.approx(10.8, abs=1e-4) and data.shape == (32, 32, 32)
    assert sorted(p.name for p in job.iterdir()) == ["aligned.mrc"]
    assert events[-1].fraction == 1.0 and any("local search" in e.message for e in events)


def test_c1_job_writes_the_map_unchanged(project):
    job = project / "External" / "job003"
    job.mkdir(parents=True)
    src = project / "InitialModel/job001/run_it100_class002.mrc"
    run_align_symmetry_job(_values(fn_in=str(src.relative_to(project)), sym_name="C1"), job, project_dir=project,
                           progress=lambda e: None)
    data, px = read_map(job / "aligned.mrc")
    orig, opx = read_map(src)
    assert np.array_equal(data, orig) and px == opx


def test_model_star_picks_the_largest_or_the_best_resolved_class(project):
    star = project / "InitialModel/job001/run_it100_model.star"
    cls1, cls2 = (project / f"InitialModel/job001/run_it100_class00{i}.mrc" for i in (1, 2))
    assert class_maps_from_model(star, select_largest_class=True, project_dir=project) == [cls2]
    assert class_maps_from_model(star, select_highest_resol=True, project_dir=project) == [cls1]
    assert class_maps_from_model(star, project_dir=project) == [cls1, cls2]
    job = project / "External" / "job004"
    job.mkdir(parents=True)
    run_align_symmetry_job(_values(fn_in="InitialModel/job001/run_it100_model.star", sym_name="C1",
                                   do_select_largest_class=True), job, project_dir=project, progress=lambda e: None)
    assert np.array_equal(read_map(job / "aligned.mrc")[0], read_map(cls2)[0])


def test_model_star_without_selection_keeps_the_most_symmetric_class(project):
    res = align_symmetry_file(project / "InitialModel/job001/run_it100_model.star", "C6", project_dir=project,
                              nr_uniform=40, local_search_range=1)
    assert res.source == project / "InitialModel/job001/run_it100_class002.mrc"
    assert len(res.scores) == 2 and res.score == min(res.scores.values())


def test_model_star_option_errors(project):
    star = project / "InitialModel/job001/run_it100_model.star"
    with pytest.raises(ValueError, match="C1"):
        align_symmetry_file(star, "C1", project_dir=project)
    with pytest.raises(ValueError, match="not both"):
        class_maps_from_model(star, select_largest_class=True, select_highest_resol=True, project_dir=project)


def test_missing_files_and_unknown_symmetry_are_named(project):
    job = project / "External" / "job005"
    job.mkdir(parents=True)
    quiet = {"job_dir": job, "project_dir": project, "progress": lambda e: None}
    with pytest.raises(InputError, match="nothere.mrc") as err:
        run_align_symmetry_job(_values(fn_in="nothere.mrc", sym_name="C6"), **quiet)
    assert "not found" in str(err.value)
    with pytest.raises(InputError, match="'Q9'") as err:
        run_align_symmetry_job(_values(fn_in="InitialModel/job001/run_it100_class002.mrc", sym_name="Q9"), **quiet)
    assert err.value.field == "--sym"
    bad = _model_star(project, ["InitialModel/job001/missing_class.mrc"], [1.0], [10.0])
    with pytest.raises(InputError, match="missing_class.mrc") as err:
        run_align_symmetry_job(_values(fn_in=str(bad.relative_to(project)), sym_name="C1",
                                       do_select_largest_class=True), **quiet)
    assert err.value.field == "rlnReferenceImage" and err.value.row == 1 and "run_it100_model.star" in str(err.value)
    assert not (job / "aligned.mrc").exists()


def test_cli_parser_from_the_registry(project, monkeypatch, capsys):
    from subtomo_nb.jobs import build_argparser

    parser = argparse.ArgumentParser(prog="subtomo")
    sub = parser.add_subparsers(dest="command", required=True)
    build_argparser("align_symmetry", sub).set_defaults(func=run_from_args)
    monkeypatch.chdir(project)
    args = parser.parse_args(["align-symmetry", "--i", "InitialModel/job001/run_it100_model.star", "--o",
                              "External/job006/aligned.mrc", "--sym", "C6", "--select_largest_class", "--box_size",
                              "16", "--nr_uniform", "30", "--local_search_range", "1", "--apply_sym"])
    assert args.func(args) == 0
    data, px = read_map(project / "External/job006/aligned.mrc")
    assert data.shape == (32, 32, 32) and px == pytest.approx(10.8, abs=1e-4)
    assert "aligned map: External/job006/aligned.mrc" in capsys.readouterr().out
    # a directory as --o receives aligned.mrc
    args = parser.parse_args(["align-symmetry", "--i", "InitialModel/job001/run_it100_class001.mrc", "--o",
                              "External/job007", "--sym", "C1"])
    assert args.func(args) == 0 and (project / "External/job007/aligned.mrc").is_file()

    from subtomo_nb.cli import main as cli_main

    if _has_subcommand(cli_main, "align-symmetry"):  # once subtomo's parser lists it
        assert cli_main.main(["align-symmetry", "--i", "InitialModel/job001/run_it100_class001.mrc", "--o",
                              "External/job008/aligned.mrc", "--sym", "C1"]) == 0
        assert cli_main.main(["align-symmetry", "--i", "InitialModel/job001/run_it100_class001.mrc", "--o",
                              "External/job009/aligned.mrc", "--sym", "Q9"]) == 1
        assert "Q9" in capsys.readouterr().err


def _has_subcommand(cli_main, name: str) -> bool:
    parser = cli_main.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return name in action.choices
    return False


def test_job_registry_runs_it_in_a_job_directory(project):
    from subtomo_nb.jobs import run_job

    d = run_job("align_symmetry", {"fn_in": "InitialModel/job001/run_it100_model.star", "sym_name": "C1",
                                   "do_select_largest_class": True}, project)
    assert (d / "RELION_JOB_EXIT_SUCCESS").is_file()
    data, px = read_map(d / "aligned.mrc")
    assert np.array_equal(data, read_map(project / "InitialModel/job001/run_it100_class002.mrc")[0])
    assert px == pytest.approx(10.8, abs=1e-4)
