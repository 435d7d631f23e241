"""STAR reading and writing: lossless round trips, RELION layout, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from io_testutils import REFERENCE_DIR, assert_blocks_identical
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.star import VERSION_LINE, is_relion_label, read_star, relion_labels, write_star

REFERENCE_STARS = sorted(REFERENCE_DIR.rglob("*.star")) if REFERENCE_DIR.is_dir() else []


def test_reference_stars_found(reference_dir):
    # guards the parametrised round trip below against silently testing nothing
    assert len(REFERENCE_STARS) >= 10


@pytest.mark.parametrize("star", REFERENCE_STARS, ids=lambda p: str(p.relative_to(REFERENCE_DIR)))
def test_reference_round_trip_is_bitwise(star, tmp_path):
    first = read_star(star)
    out = tmp_path / "rt.star"
    write_star(out, first)
    second = read_star(out)
    assert_blocks_identical(first, second)
    # writing what was read back gives the very same text (the writer is deterministic)
    out2 = tmp_path / "rt2.star"
    write_star(out2, second)
    assert out2.read_text() == out.read_text()


def test_reference_values_parsed_exactly(reference_dir):
    blocks = read_star(reference_dir / "refine_outputs_c4" / "run_it001_data.star")
    parts = blocks["particles"]
    # first row as written by RELION: 2.382174 32.937828 -41.66744 ... 61502.976562
    assert parts["rlnAngleRot"].iloc[0] == float("2.382174")
    assert parts["rlnAnglePsi"].iloc[0] == float("-41.66744")
    assert parts["rlnLogLikeliContribution"].iloc[0] == float("61502.976562")
    assert parts["rlnNrOfSignificantSamples"].dtype.kind == "i"
    assert parts["rlnImageName"].iloc[0] == "Subtomograms/p00001_data.mrc"
    opt = read_star(reference_dir / "refine_outputs_c4" / "run_it001_optimiser.star")["optimiser_general"]
    assert opt["rlnTomoTomogramsFile"] == ""  # RELION's "" is an empty string
    assert opt["rlnRandomSeed"] == 1795323214 and isinstance(opt["rlnRandomSeed"], int)


def test_block_names_and_order(reference_dir):
    model = read_star(reference_dir / "refine_outputs_c4" / "run_it001_half1_model.star")
    assert list(model) == [
        "model_general", "model_classes", "model_class_1", "model_groups",
        "model_optics_group_1", "model_pdf_orient_class_1",
    ]
    assert isinstance(model["model_general"], dict)
    oset = read_star(reference_dir / "refine_outputs_c4" / "run_it001_optimisation_set.star")
    assert list(oset) == [""]  # bare data_


def _synthetic_blocks() -> dict:
    rng = np.random.default_rng(7)
    n = 9
    floats = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
    floats[:4] = [0.1, -0.0, 1e-300, 2.0 / 3.0]
    return {
        "general": {"rlnTomoSubTomosAre2DStacks": 1, "rlnTomoName": "with space", "rlnImageName": ""},
        "optics": pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnImagePixelSize": [1.35 * 4, np.pi]}),
        "empty_loop": pd.DataFrame({"rlnAngleRot": pd.Series([], dtype=float)}),
        "empty": {},
        "particles": pd.DataFrame(
            {
                "rlnTomoName": [f"TS_{i:02d}" for i in range(n)],
                "rlnAngleRot": floats,
                "rlnAngleTilt": rng.uniform(0, 180, n),
                "rlnClassNumber": np.arange(1, n + 1),
                "rlnTomoVisibleFrames": ["[1,1,0,1,0]"] * n,
                "rlnImageName": ["a b.mrcs", "", "x#y", "data_z", "p.mrcs", "q", "r", "s", "t"],
            }
        ),
        "": {"rlnTomoParticlesFile": "particles.star"},
    }


def test_synthetic_round_trip(tmp_path):
    blocks = _synthetic_blocks()
    path = tmp_path / "synthetic.star"
    write_star(path, blocks)
    back = read_star(path)
    assert_blocks_identical(back, read_star(_rewrite(back, tmp_path)))
    # the values we wrote come back exactly
    assert list(back) == list(blocks)
    parts, orig = back["particles"], blocks["particles"]
    assert np.array_equal(parts["rlnAngleRot"].to_numpy().view(np.int64), orig["rlnAngleRot"].to_numpy().view(np.int64))
    assert parts["rlnClassNumber"].dtype.kind == "i"
    assert parts["rlnTomoVisibleFrames"].tolist() == orig["rlnTomoVisibleFrames"].tolist()
    assert parts["rlnImageName"].tolist() == orig["rlnImageName"].tolist()
    assert back["general"] == blocks["general"]
    assert back["empty"] == {} and list(back["empty_loop"].columns) == ["rlnAngleRot"] and len(back["empty_loop"]) == 0
    assert back[""] == {"rlnTomoParticlesFile": "particles.star"}


def _rewrite(blocks: dict, tmp_path: Path) -> Path:
    out = tmp_path / "again.star"
    write_star(out, blocks)
    return out


def test_written_layout_is_relions(tmp_path):
    path = tmp_path / "l.star"
    write_star(path, {"optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImageSize": [32]}), "general": {"rlnTomoSubTomosAre2DStacks": 0}})
    lines = path.read_text().splitlines()
    assert lines.count(VERSION_LINE) == 2
    i = lines.index("data_optics")
    assert lines[i - 2] == VERSION_LINE
    assert lines[i + 2 : i + 6] == ["loop_", "_rlnOpticsGroup #1", "_rlnImageSize #2", "1 32"]
    assert any(line.split() == ["_rlnTomoSubTomosAre2DStacks", "0"] for line in lines)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_label_list_is_relion5():
    labels = relion_labels()
    assert len(labels) > 500
    for name in ("rlnTomoVisibleFrames", "rlnCenteredCoordinateXAngst", "rlnTomoTiltSeriesStarFile",
                 "rlnTomoSubTomosAre2DStacks", "rlnTomoReferenceFscFile", "rlnCtfImage", "rlnMicrographPreExposure"):
        assert is_relion_label(name), name
    assert not is_relion_label("rlnNotALabel")


def test_reference_labels_all_known(reference_dir):
    for star in REFERENCE_STARS:
        for block in read_star(star).values():
            for label in block:
                assert is_relion_label(label), (star, label)


# ---------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.star"
    with pytest.raises(InputError) as exc:
        read_star(path)
    assert "nowhere.star" in str(exc.value) and "not found" in str(exc.value)


def test_unknown_label(tmp_path):
    path = tmp_path / "unknown.star"
    path.write_text("data_particles\n\nloop_\n_rlnAngleRot #1\n_rlnBogusLabel #2\n1.0 2.0\n")
    with pytest.raises(InputError) as exc:
        read_star(path)
    assert "unknown.star" in str(exc.value)
    assert exc.value.field == "rlnBogusLabel" and "field rlnBogusLabel" in str(exc.value)
    # allowed when asked
    assert list(read_star(path, check_labels=False)["particles"].columns) == ["rlnAngleRot", "rlnBogusLabel"]


def test_row_with_wrong_number_of_values(tmp_path):
    path = tmp_path / "short.star"
    path.write_text("data_p\nloop_\n_rlnAngleRot #1\n_rlnAngleTilt #2\n1 2\n3 4\n5\n7 8\n")
    with pytest.raises(InputError) as exc:
        read_star(path)
    assert exc.value.row == 3 and "short.star: row 3" in str(exc.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("just some words\n", "before the first data_"),
        ("", "no data_ block"),
        ("data_a\n_rlnAngleRot 1\ndata_a\n_rlnAngleTilt 2\n", "duplicate block"),
        ("data_a\n_rlnAngleRot 1 2\n", "exactly one value"),
        ("data_a\nloop_\n1 2\n", "without labels"),
    ],
)
def test_unparseable_text(tmp_path, text, fragment):
    path = tmp_path / "bad.star"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        read_star(path)
    assert "bad.star" in str(exc.value) and fragment in str(exc.value)


def test_binary_file(tmp_path):
    path = tmp_path / "binary.star"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError) as exc:
        read_star(path)
    assert "binary.star" in str(exc.value)


def test_write_rejects_unknown_label(tmp_path):
    path = tmp_path / "out.star"
    with pytest.raises(InputError) as exc:
        write_star(path, {"p": pd.DataFrame({"rlnNoSuchThing": [1]})})
    assert exc.value.field == "rlnNoSuchThing" and "out.star" in str(exc.value)
    assert not path.exists()
    write_star(path, {"p": pd.DataFrame({"rlnNoSuchThing": [1]})}, check_labels=False)
    assert read_star(path, check_labels=False)["p"]["rlnNoSuchThing"].tolist() == [1]
