"""Re-centring against RELION's own ``relion_star_handler --center --center_Z 2.75`` output."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from subtomo_nb.cli.main import main
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.star import read_star, write_star
from subtomo_nb.tasks.recentre import recentre_star, recentre_table
from tests._shared import relion_reference


def test_matches_relion_star_handler(tmp_path):
    ref = relion_reference()
    src = tmp_path / "in.star"
    shutil.copy(ref / "star_handler_input.star", src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.star"
    assert main(["star-handler", "--i", str(src), "--o", str(out), "--center", "--center_Z", "2.75"]) == 0
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # input untouched
    ours = read_star(out)
    relion = read_star(ref / "star_handler_center_z2.75.star")
    assert list(ours) == list(relion)
    for name in relion:
        assert list(ours[name].columns) == list(relion[name].columns)
    for label in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"):
        np.testing.assert_allclose(ours["particles"][label], relion["particles"][label], atol=2e-5)
    pd.testing.assert_series_equal(ours["particles"]["rlnImageName"], relion["particles"]["rlnImageName"])


def test_formula_and_no_z_column():
    rng = np.random.default_rng(0)
    n = 50
    df = pd.DataFrame({
        "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(0, 180, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n), "rlnOriginXAngst": rng.normal(size=n),
        "rlnOriginYAngst": rng.normal(size=n), "rlnOpticsGroup": rng.integers(1, 3, n),
    })
    c = (1.0, -2.0, 3.0)
    out = recentre_table(df, c, {1: 2.0, 2: 5.0})
    assert "rlnOriginZAngst" not in out.columns
    A = euler_to_matrix(df.rlnAngleRot, df.rlnAngleTilt, df.rlnAnglePsi)
    pix = np.where(df.rlnOpticsGroup == 1, 2.0, 5.0)
    p = A @ np.array(c)
    np.testing.assert_allclose(out.rlnOriginXAngst, df.rlnOriginXAngst - pix * p[:, 0])
    np.testing.assert_allclose(out.rlnOriginYAngst, df.rlnOriginYAngst - pix * p[:, 1])
    assert df is not out


def test_bad_input_named(tmp_path):
    df = pd.DataFrame({"rlnAngleRot": [0.0, np.nan], "rlnAngleTilt": [0.0, 0.0], "rlnAnglePsi": [0.0, 0.0],
                       "rlnOriginXAngst": [0.0, 0.0], "rlnOriginYAngst": [0.0, 0.0], "rlnOpticsGroup": [1, 1]})
    with pytest.raises(InputError, match=r"row 2, field rlnAngleRot"):
        recentre_table(df, (0, 0, 1), 1.0, path="x.star")
    star = tmp_path / "p.star"
    write_star(star, {"particles": df.drop(columns=["rlnOriginYAngst"]).fillna(0.0)})
    with pytest.raises(InputError) as err:
        recentre_star(star, tmp_path / "o.star", (0, 0, 1), ignore_optics=True)
    assert "p.star" in str(err.value) and "rlnOriginYAngst" in str(err.value)
    with pytest.raises(InputError, match="overwrite"):
        recentre_star(star, star, (0, 0, 1), ignore_optics=True)
