"""Particle sets: reading RELION's files, validation errors, path resolution, round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from io_testutils import assert_tables_identical, make_pseudo_project, make_stack2d_project
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.particles import (
    ParticleSet,
    box_size,
    check_files,
    is_2d_stack,
    parse_visible_frames,
    pixel_size,
    read_particles,
    resolve_path,
    subtomogram_binning,
    visible_frames,
    write_particles,
)
from subtomo_nb.io.star import read_star, write_star


def test_reference_pseudo_subtomo_particles(pseudo_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project dir must come from the STAR file, not the cwd
    pset = read_particles(pseudo_dir / "particles.star")
    assert len(pset) == 60
    assert not is_2d_stack(pset) and pset.general == {"rlnTomoSubTomosAre2DStacks": 0}
    assert pixel_size(pset) == 6.0 and pixel_size(pset, 1) == 6.0 and box_size(pset, 1) == 32
    assert pset.project_dir == pseudo_dir.resolve()
    assert resolve_path(pset, pset.particles["rlnCtfImage"].iloc[4]) == pseudo_dir.resolve() / "Subtomograms/p00005_weights.mrc"
    check_files(pset)
    assert pset.particles["rlnRandomSubset"].tolist()[:4] == [1, 2, 1, 2]


def test_reference_refine_output_with_explicit_project_dir(reference_dir, pseudo_dir):
    data_star = reference_dir / "refine_outputs_c4" / "run_it001_data.star"
    pset = read_particles(data_star, project_dir=pseudo_dir)
    assert pset.project_dir == pseudo_dir.absolute()
    check_files(pset)
    assert pset.general is None and len(pset) == 60
    assert pset.particles["rlnNrOfSignificantSamples"].iloc[0] == 502


def test_truth_star_without_tomo_name(pseudo_dir):
    with pytest.raises(InputError) as exc:
        read_particles(pseudo_dir / "truth.star")
    assert exc.value.field == "rlnTomoName" and "truth.star" in str(exc.value)
    pset = read_particles(pseudo_dir / "truth.star", require_tomo=False)
    assert pset.particles["rlnAngleRot"].iloc[0] == float("-157.226106")


def test_relative_paths_resolve_from_project_dir(tmp_path, monkeypatch):
    project = tmp_path / "project"
    star = make_pseudo_project(project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pset = read_particles(star)  # STAR in project/Extract/job001, names relative to project/
    assert pset.project_dir == project.resolve()
    assert resolve_path(pset, "Subtomograms/p1_data.mrc") == project.resolve() / "Subtomograms/p1_data.mrc"
    assert resolve_path(pset, "3@Subtomograms/p1_data.mrc") == project.resolve() / "Subtomograms/p1_data.mrc"
    check_files(pset)
    # an explicit project directory wins
    assert read_particles(star, project_dir=elsewhere).project_dir == elsewhere.absolute()
    # nothing found: the current directory, and check_files then names the missing file
    (project / "Subtomograms" / "p1_data.mrc").rename(project / "moved.mrc")
    pset = read_particles(star)
    assert pset.project_dir == elsewhere.resolve()
    with pytest.raises(InputError) as exc:
        check_files(pset)
    assert exc.value.row == 1 and exc.value.field == "rlnImageName"


def test_write_read_round_trip(tmp_path):
    star = make_pseudo_project(tmp_path / "p")
    pset = read_particles(star)
    out = tmp_path / "p" / "Refine3D" / "run_data.star"
    write_particles(out, pset)
    back = read_particles(out)
    assert back.general == pset.general
    assert_tables_identical(back.optics, pset.optics)
    assert_tables_identical(back.particles, pset.particles)
    assert back.project_dir == pset.project_dir  # names stay project-relative
    assert list(read_star(out)) == ["general", "optics", "particles"]


def test_box_and_binning_shared_by_several_optics_groups(tmp_path):
    """One optics group per tomogram (relion_tomo_subtomo's way): without a group, the box and
    binning all groups share; groups that differ are refused in one line naming the field."""
    pset = read_particles(make_pseudo_project(tmp_path / "p"))
    row = pset.optics.iloc[[0]]
    optics = pd.concat([row.assign(rlnOpticsGroup=g, rlnOpticsGroupName=f"opticsGroup{g}") for g in (1, 2, 3)],
                       ignore_index=True)
    many = ParticleSet(pset.general, optics, pset.particles, path=pset.path, project_dir=pset.project_dir)
    assert box_size(many) == box_size(pset) and subtomogram_binning(many) == subtomogram_binning(pset)
    assert pixel_size(many) == pixel_size(pset)
    box = box_size(pset)
    optics.loc[1, "rlnImageSize"] = 2 * box
    with pytest.raises(InputError, match=f"rlnImageSize.*group 1: {box}, group 2: {2 * box}, group 3: {box}") as err:
        box_size(many)
    assert err.value.row == 2                              # data_optics row of the first group that differs
    assert box_size(many, 2) == 2 * box
    # the reconstruction's grid takes the same check (one map needs one box and pixel size)
    from subtomo_nb.tasks.reconstruct import common_box_and_pixel

    with pytest.raises(InputError, match="rlnImageSize"):
        common_box_and_pixel(many)
    optics.loc[1, "rlnImageSize"] = box
    assert common_box_and_pixel(many) == (box, pixel_size(pset))


def test_general_block_written_as_loop_is_accepted(tmp_path):
    star = make_pseudo_project(tmp_path / "p")
    blocks = read_star(star)
    blocks["general"] = pd.DataFrame({"rlnTomoSubTomosAre2DStacks": [0]})  # as relion_refine writes it
    write_star(star, blocks)
    assert read_particles(star).general == {"rlnTomoSubTomosAre2DStacks": 0}


def test_2d_stacks(tmp_path):
    star = make_stack2d_project(tmp_path / "p", frames="[1,0,1,1,0]")
    pset = read_particles(star)
    assert is_2d_stack(pset)
    assert visible_frames(pset, 1).tolist() == [True, False, True, True, False]
    assert pixel_size(pset) == 2.0  # falls back to rlnTomoTiltSeriesPixelSize
    check_files(pset)
    assert parse_visible_frames("[0, 1]").tolist() == [False, True]
    with pytest.raises(ValueError):
        parse_visible_frames("[1,2,0]")


# ---------------------------------------------------------------------------- bad input


def _edit(star, block, fn):
    blocks = read_star(star)
    blocks[block] = fn(blocks[block])
    write_star(star, blocks)


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        read_particles(tmp_path / "no_particles.star")
    assert "no_particles.star" in str(exc.value)


def test_missing_required_column(tmp_path):
    star = make_pseudo_project(tmp_path / "p")
    _edit(star, "particles", lambda df: df.drop(columns=["rlnImageName"]))
    with pytest.raises(InputError) as exc:
        read_particles(star)
    assert str(star) in str(exc.value) and "field rlnImageName" in str(exc.value)


def test_missing_required_optics_column(tmp_path):
    star = make_pseudo_project(tmp_path / "p")
    _edit(star, "optics", lambda df: df.drop(columns=["rlnImageSize"]))
    with pytest.raises(InputError) as exc:
        read_particles(star)
    assert "particles.star" in str(exc.value) and exc.value.field == "rlnImageSize"


def test_incomplete_euler_angles(tmp_path):
    star = make_pseudo_project(tmp_path / "p")
    _edit(star, "particles", lambda df: df.drop(columns=["rlnAnglePsi"]))
    with pytest.raises(InputError) as exc:
        read_particles(star)
    assert exc.value.field == "rlnAnglePsi"


def test_nan_angle_names_row(tmp_path):
    star = make_pseudo_project(tmp_path / "p", n=5)

    def poison(df):
        df = df.copy()
        df.loc[3, "rlnAngleTilt"] = np.nan  # 4th data row
        return df

    _edit(star, "particles", poison)
    with pytest.raises(InputError) as exc:
        read_particles(star)
    msg = str(exc.value)
    assert "particles.star" in msg and "row 4" in msg and "field rlnAngleTilt" in msg
    assert exc.value.row == 4


def test_non_numeric_origin_names_row(tmp_path):
    star = make_pseudo_project(tmp_path / "p", n=3)
    text = star.read_text().splitlines()
    rows = [i for i, line in enumerate(text) if line.startswith("TS_01 ")]
    fields = text[rows[1]].split()
    fields[-1] = "abc"  # rlnOriginZAngst of row 2
    text[rows[1]] = " ".join(fields)
    star.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError) as exc:
        read_particles(star)
    assert exc.value.row == 2 and exc.value.field == "rlnOriginZAngst"


def test_optics_group_missing_from_optics(tmp_path):
    star = make_pseudo_project(tmp_path / "p", n=3)

    def regroup(df):
        df = df.copy()
        df.loc[2, "rlnOpticsGroup"] = 7
        return df

    _edit(star, "particles", regroup)
    with pytest.raises(InputError) as exc:
        read_particles(star)
    msg = str(exc.value)
    assert "particles.star" in msg and "row 3" in msg and "field rlnOpticsGroup" in msg and "7" in msg


def test_missing_optics_block(tmp_path):
    star = make_pseudo_project(tmp_path / "p")
    blocks = read_star(star)
    del blocks["optics"]
    write_star(star, blocks)
    with pytest.raises(InputError) as exc:
        read_particles(star)
    assert "data_optics" in str(exc.value)


def test_missing_weights_file(tmp_path):
    star = make_pseudo_project(tmp_path / "p", n=3)
    (tmp_path / "p" / "Subtomograms" / "p2_weights.mrc").unlink()
    pset = read_particles(star)  # files are not checked on read
    with pytest.raises(InputError) as exc:
        check_files(pset)
    msg = str(exc.value)
    assert "particles.star" in msg and "row 2" in msg and "field rlnCtfImage" in msg


def test_bad_visible_frames(tmp_path):
    star = make_stack2d_project(tmp_path / "p", n=2)

    def spoil(df):
        df = df.copy()
        df.loc[1, "rlnTomoVisibleFrames"] = "[1,x,0]"
        return df

    _edit(star, "particles", spoil)
    with pytest.raises(InputError) as exc:
        read_particles(star)
    assert exc.value.row == 2 and exc.value.field == "rlnTomoVisibleFrames"


def test_2d_stack_needs_visible_frames(tmp_path):
    star = make_stack2d_project(tmp_path / "p", n=2)
    _edit(star, "particles", lambda df: df.drop(columns=["rlnTomoVisibleFrames"]))
    with pytest.raises(InputError) as exc:
        read_particles(star)
    assert exc.value.field == "rlnTomoVisibleFrames"


def test_write_refuses_invalid_set(tmp_path):
    star = make_pseudo_project(tmp_path / "p", n=2)
    pset = read_particles(star)
    bad = ParticleSet(pset.general, pset.optics, pset.particles.drop(columns=["rlnOpticsGroup"]))
    out = tmp_path / "out.star"
    with pytest.raises(InputError) as exc:
        write_particles(out, bad)
    assert exc.value.field == "rlnOpticsGroup" and not out.exists()
