"""validate(): one message per offending field, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from subtomo_nb.jobs import validate as _validate

from ._helpers import write_optimisation_set, write_particles


def validate(*args, **kwargs):
    """The value rules only: this fixture's files are stand-ins (deep checks: tests/jobs/test_bad_inputs.py)."""
    return _validate(*args, deep=False, **kwargs)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    write_particles(tmp_path / "Extract/job002/particles.star", box=32, pixel=6.0)  # 192 Å box
    write_optimisation_set(tmp_path / "Extract/job002/optimisation_set.star", "Extract/job002/particles.star",
                           "Tomograms/job001/tomograms.star")
    (tmp_path / "Tomograms/job001").mkdir(parents=True)
    (tmp_path / "Tomograms/job001/tomograms.star").write_text("data_global\n")
    (tmp_path / "ref.mrc").write_bytes(b"\0" * 16)
    return tmp_path


def _refine(**changes):
    values = {"in_optimisation": "Extract/job002/optimisation_set.star", "fn_ref": "ref.mrc", "particle_diameter": 150,
              "scratch_dir": ""}
    values.update(changes)
    return values


def test_good_values_pass(project):
    assert validate("refine3d", _refine(), project_dir=project) == {}
    assert validate("initial_model", {"in_optimisation": "Extract/job002/optimisation_set.star",
                                      "particle_diameter": 180, "scratch_dir": ""}, project_dir=project) == {}
    assert validate("recentre", {"fn_in": "Extract/job002/particles.star"}, project_dir=project) == {}


def test_missing_input_file(project):
    errors = validate("refine3d", _refine(fn_ref="missing.mrc"), project_dir=project)
    assert list(errors) == ["fn_ref"]
    assert errors["fn_ref"].startswith("Reference map:") and "not found" in errors["fn_ref"]
    errors = validate("refine3d", _refine(in_optimisation="nope_optimisation_set.star"), project_dir=project)
    assert "in_optimisation" in errors and "nope_optimisation_set.star" in errors["in_optimisation"]


def test_required_reference(project):
    errors = validate("refine3d", _refine(fn_ref=""), project_dir=project)
    assert errors == {"fn_ref": "Reference map: is required"}


@pytest.mark.parametrize("key,value,words", [
    ("offset_step", 7, "between 0.1 and 5"),
    ("sigma_tilt", 45, "between -1 and 30"),
    ("nr_mpi", 0, "between 1 and 64"),
    ("nr_threads", 0, ">= 1"),
    ("particle_diameter", -5, "> 0"),
    ("particle_diameter", 0, "> 0"),
    ("helical_z_percentage", 90, "between 5 and 80"),
    ("sampling", "2 degrees", "must be one of"),
    ("ini_high", "sixty", "bad value"),
])
def test_number_out_of_range_or_bad(project, key, value, words):
    errors = validate("refine3d", _refine(**{key: value}), project_dir=project)
    assert key in errors and words in errors[key], errors


def test_unknown_symmetry(project):
    errors = validate("refine3d", _refine(sym_name="C6x"), project_dir=project)
    assert list(errors) == ["sym_name"] and "unknown symmetry 'C6x'" in errors["sym_name"]
    errors = validate("refine3d", _refine(relax_sym="Q2"), project_dir=project)
    assert list(errors) == ["relax_sym"]
    assert validate("refine3d", _refine(sym_name="d7"), project_dir=project) == {}
    errors = validate("initial_model", {"in_optimisation": "Extract/job002/optimisation_set.star", "sym_name": "X",
                                        "particle_diameter": 100, "scratch_dir": ""}, project_dir=project)
    assert list(errors) == ["sym_name"]


def test_mask_diameter_larger_than_box(project):
    errors = validate("refine3d", _refine(particle_diameter=200), project_dir=project)
    assert list(errors) == ["particle_diameter"]
    assert "larger than the particle box" in errors["particle_diameter"] and "192" in errors["particle_diameter"]
    direct = _refine(in_optimisation="", use_direct_entries=True, in_particles="Extract/job002/particles.star",
                     in_tomograms="Tomograms/job001/tomograms.star", particle_diameter=250)
    assert list(validate("refine3d", direct, project_dir=project)) == ["particle_diameter"]


def test_optimisation_set_xor_direct_entries(project):
    both = _refine(use_direct_entries=True, in_particles="Extract/job002/particles.star",
                   in_tomograms="Tomograms/job001/tomograms.star")
    errors = validate("refine3d", both, project_dir=project)
    assert list(errors) == ["in_optimisation"] and "not both" in errors["in_optimisation"]
    stale = _refine(in_particles="Extract/job002/particles.star")
    errors = validate("refine3d", stale, project_dir=project)
    assert list(errors) == ["use_direct_entries"] and "both" in errors["use_direct_entries"]
    neither = _refine(in_optimisation="")
    errors = validate("refine3d", neither, project_dir=project)
    assert list(errors) == ["in_optimisation"] and "is required" in errors["in_optimisation"]
    half = _refine(in_optimisation="", use_direct_entries=True, in_particles="Extract/job002/particles.star")
    errors = validate("refine3d", half, project_dir=project)
    assert list(errors) == ["in_tomograms"] and "required" in errors["in_tomograms"]


def test_job_specific_rules(project):
    inimodel = {"in_optimisation": "Extract/job002/optimisation_set.star", "particle_diameter": 100,
                "scratch_dir": "", "nr_mpi": 4}
    errors = validate("initial_model", inimodel, project_dir=project)
    assert list(errors) == ["nr_mpi"] and "MPI" in errors["nr_mpi"]
    errors = validate("extract", {"in_optimisation": "Extract/job002/optimisation_set.star", "box_size": 33},
                      project_dir=project)
    assert list(errors) == ["box_size"] and "even" in errors["box_size"]
    errors = validate("extract", {"in_optimisation": "Extract/job002/optimisation_set.star", "box_size": 32,
                                  "crop_size": 48}, project_dir=project)
    assert list(errors) == ["crop_size"]
    errors = validate("refine3d", _refine(fn_cont="Refine3D/job003/run_it005_data.star"), project_dir=project,
                      is_continue=True)
    assert "fn_cont" in errors
    errors = validate("refine3d", {"bogus": 1, **_refine()}, project_dir=project)
    assert list(errors) == ["bogus"]


@pytest.mark.parametrize("other_args, refused", [("--grad_fin_subset 500", True), ("--grad_fin_subset -1", False),
                                                 ("--grad_ini_subset 300", False)])
def test_fast_with_a_final_mini_batch_size_is_refused(project, other_args, refused):
    """--fast keeps every mini-batch at its initial size: an explicit --grad_fin_subset would be ignored."""
    from subtomo_nb.io.errors import InputError
    from subtomo_nb.jobs.validate import check_job

    values = {"in_optimisation": "Extract/job002/optimisation_set.star", "particle_diameter": 180,
              "scratch_dir": "", "other_args": other_args}
    assert validate("initial_model", values, project_dir=project) == {}          # RELION's job takes it
    errors = validate("initial_model", dict(values, do_fast=True), project_dir=project)
    if not refused:
        assert errors == {}
        return
    assert list(errors) == ["other_args"]
    assert errors["other_args"].startswith("Additional arguments: --grad_fin_subset 500 cannot be used with --fast")
    # the one validation step of every entry point: one line naming the field
    with pytest.raises(InputError) as info:
        check_job("initial_model", dict(values, do_fast=True), project_dir=project)
    line = str(info.value)
    assert info.value.field == "other_args" and "\n" not in line
    assert line.startswith("field other_args: Additional arguments: --grad_fin_subset 500 cannot be used with --fast")
