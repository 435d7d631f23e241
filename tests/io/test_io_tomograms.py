"""Tomogram sets: RELION 5 per-tomogram tilt-series files, embedded tables, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from io_testutils import assert_tables_identical
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.star import read_star, write_star
from subtomo_nb.io.tomograms import TomogramSet, read_tomograms, write_tomograms


def _global(names, with_files=True):
    table = pd.DataFrame(
        {
            "rlnTomoName": names,
            "rlnVoltage": 300.0,
            "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.1,
            "rlnMicrographOriginalPixelSize": 0.675,
            "rlnTomoHand": -1.0,
            "rlnTomoTiltSeriesPixelSize": 1.35,
            "rlnTomoSizeX": 4000,
            "rlnTomoSizeY": 4000,
            "rlnTomoSizeZ": 2000,
        }
    )
    if with_files:
        table.insert(1, "rlnTomoTiltSeriesStarFile", [f"ImportTomo/job001/tilt_series/{n}.star" for n in names])
    return table


def _tilt_series(n_tilts=5, seed=0):
    rng = np.random.default_rng(seed)
    tilts = np.linspace(-60, 60, n_tilts)
    return pd.DataFrame(
        {
            "rlnMicrographName": [f"MotionCorr/job002/frames/t{i}.mrc" for i in range(n_tilts)],
            "rlnTomoXTilt": np.zeros(n_tilts),
            "rlnTomoYTilt": tilts + rng.normal(0, 0.1, n_tilts),
            "rlnTomoZRot": np.full(n_tilts, 85.3),
            "rlnTomoXShiftAngst": rng.normal(0, 20, n_tilts),
            "rlnTomoYShiftAngst": rng.normal(0, 20, n_tilts),
            "rlnDefocusU": rng.normal(30000, 500, n_tilts),
            "rlnDefocusV": rng.normal(29000, 500, n_tilts),
            "rlnDefocusAngle": rng.uniform(-90, 90, n_tilts),
            "rlnMicrographPreExposure": np.arange(n_tilts) * 3.0,
        }
    )


def _make_relion5_project(root: Path, names=("TS_01", "TS_02")) -> Path:
    for i, name in enumerate(names):
        write_star(root / "ImportTomo" / "job001" / "tilt_series" / f"{name}.star", {name: _tilt_series(seed=i)})
    star = root / "ImportTomo" / "job001" / "tomograms.star"
    write_star(star, {"global": _global(list(names))})
    return star


def test_reference_tomograms(pseudo_dir, tmp_path):
    tset = read_tomograms(pseudo_dir / "tomograms.star")
    assert tset.names == ["TS_01"] and tset.tilt_series == {} and tset.embedded
    row = tset.row("TS_01")
    assert row["rlnTomoTiltSeriesPixelSize"] == 6.0 and row["rlnTomoSizeZ"] == 300 and row["rlnTomoHand"] == -1
    write_tomograms(tmp_path / "tomograms.star", tset)
    assert_tables_identical(read_tomograms(tmp_path / "tomograms.star").global_table, tset.global_table)


def test_relion5_tilt_series_files(tmp_path, monkeypatch):
    project = tmp_path / "project"
    star = _make_relion5_project(project)
    monkeypatch.chdir(tmp_path)
    tset = read_tomograms(star)
    assert tset.names == ["TS_01", "TS_02"] and not tset.embedded
    assert tset.project_dir == project.resolve()
    assert_tables_identical(tset.tilt_table("TS_02"), _tilt_series(seed=1))

    out = project / "Refine" / "job003" / "tomograms.star"
    write_tomograms(out, tset)
    written = read_star(out)["global"]["rlnTomoTiltSeriesStarFile"].tolist()
    assert written == ["Refine/job003/tilt_series/TS_01.star", "Refine/job003/tilt_series/TS_02.star"]
    back = read_tomograms(out)
    assert_tables_identical(back.global_table.drop(columns="rlnTomoTiltSeriesStarFile"),
                            tset.global_table.drop(columns="rlnTomoTiltSeriesStarFile"))
    for name in tset.names:
        assert_tables_identical(back.tilt_table(name), tset.tilt_table(name))
    # the input files were not touched by writing elsewhere
    assert read_star(star)["global"]["rlnTomoTiltSeriesStarFile"].iloc[0] == "ImportTomo/job001/tilt_series/TS_01.star"


def test_embedded_tilt_series(tmp_path):
    tset = read_tomograms(_make_relion5_project(tmp_path / "p"))
    out = tmp_path / "embedded.star"
    write_tomograms(out, tset, embed=True)
    assert list(read_star(out)) == ["global", "TS_01", "TS_02"]
    back = read_tomograms(out)
    assert back.embedded and "rlnTomoTiltSeriesStarFile" not in back.global_table.columns
    for name in tset.names:
        assert_tables_identical(back.tilt_table(name), tset.tilt_table(name))


def test_missing_compulsory_pre_exposure(tmp_path):
    star = _make_relion5_project(tmp_path / "p")
    ts_file = tmp_path / "p" / "ImportTomo" / "job001" / "tilt_series" / "TS_02.star"
    write_star(ts_file, {"TS_02": _tilt_series().drop(columns="rlnMicrographPreExposure")})
    with pytest.raises(InputError) as exc:
        read_tomograms(star)
    assert "TS_02.star" in str(exc.value) and exc.value.field == "rlnMicrographPreExposure"


def test_nan_in_tilt_series(tmp_path):
    star = _make_relion5_project(tmp_path / "p")
    ts_file = tmp_path / "p" / "ImportTomo" / "job001" / "tilt_series" / "TS_01.star"
    ts = _tilt_series()
    ts.loc[2, "rlnDefocusU"] = np.nan
    write_star(ts_file, {"TS_01": ts})
    with pytest.raises(InputError) as exc:
        read_tomograms(star)
    assert "TS_01.star" in str(exc.value) and exc.value.row == 3 and exc.value.field == "rlnDefocusU"


def test_tilt_series_file_missing(tmp_path):
    star = _make_relion5_project(tmp_path / "p")
    (tmp_path / "p" / "ImportTomo" / "job001" / "tilt_series" / "TS_02.star").unlink()
    with pytest.raises(InputError) as exc:
        read_tomograms(star, project_dir=tmp_path / "p")
    assert "tomograms.star" in str(exc.value) and exc.value.row == 2 and exc.value.field == "rlnTomoTiltSeriesStarFile"


def test_tilt_series_file_without_its_block(tmp_path):
    star = _make_relion5_project(tmp_path / "p")
    ts_file = tmp_path / "p" / "ImportTomo" / "job001" / "tilt_series" / "TS_01.star"
    write_star(ts_file, {"TS_99": _tilt_series()})
    with pytest.raises(InputError) as exc:
        read_tomograms(star)
    assert "TS_01.star" in str(exc.value) and "data_TS_01" in str(exc.value)


def test_missing_global_column_and_duplicates(tmp_path):
    path = tmp_path / "t.star"
    write_star(path, {"global": _global(["A"], with_files=False).drop(columns="rlnTomoHand")})
    with pytest.raises(InputError) as exc:
        read_tomograms(path)
    assert "t.star" in str(exc.value) and exc.value.field == "rlnTomoHand"
    write_star(path, {"global": _global(["A", "A"], with_files=False)})
    with pytest.raises(InputError) as exc:
        read_tomograms(path)
    assert exc.value.row == 2 and exc.value.field == "rlnTomoName"


def test_require_tilt_series(pseudo_dir):
    with pytest.raises(InputError) as exc:
        read_tomograms(pseudo_dir / "tomograms.star", require_tilt_series=True)
    assert exc.value.field == "rlnTomoName" and exc.value.row == 1


def test_write_does_not_modify_set(tmp_path):
    tset = read_tomograms(_make_relion5_project(tmp_path / "p"))
    before = tset.global_table.copy()
    write_tomograms(tmp_path / "o" / "tomograms.star", TomogramSet(tset.global_table, tset.tilt_series, embedded=False))
    assert_tables_identical(tset.global_table, before)
