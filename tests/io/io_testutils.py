"""Helpers shared by the io tests: where the RELION reference data are, table comparisons."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd


def _shared_dir() -> Path:
    env = os.environ.get("SUBTOMO_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared"


REFERENCE_DIR = _shared_dir() / "data" / "relion-reference"


def assert_tables_identical(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same columns in the same order, same dtypes, bitwise-equal floats, equal other values."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for col in a.columns:
        x, y = a[col], b[col]
        assert x.dtype.kind == y.dtype.kind, (col, x.dtype, y.dtype)
        if x.dtype.kind == "f":
            xa = np.ascontiguousarray(x.to_numpy(dtype=np.float64))
            ya = np.ascontiguousarray(y.to_numpy(dtype=np.float64))
            assert np.array_equal(xa.view(np.int64), ya.view(np.int64)), col
        else:
            assert x.tolist() == y.tolist(), col


def assert_blocks_identical(a: dict, b: dict) -> None:
    """Same block names in the same order and identical contents (floats bitwise)."""
    assert list(a) == list(b)
    for name in a:
        x, y = a[name], b[name]
        assert type(x) is type(y), name
        if isinstance(x, pd.DataFrame):
            assert_tables_identical(x, y)
        else:
            assert list(x) == list(y), name
            for key in x:
                vx, vy = x[key], y[key]
                assert type(vx) is type(vy), (name, key, vx, vy)
                if isinstance(vx, float):
                    assert np.float64(vx).view(np.int64) == np.float64(vy).view(np.int64), (name, key)
                else:
                    assert vx == vy, (name, key)


def make_pseudo_project(root: Path, n: int = 3, box: int = 8, pixel: float = 2.0, seed: int = 0) -> Path:
    """A small RELION project with 3D pseudo-subtomograms; returns the particles.star path.

    Layout: ``root/Subtomograms/p<i>_data.mrc`` + ``_weights.mrc`` (RELION's (2N, N, N//2+1)
    weights) and ``root/Extract/job001/particles.star`` naming them relative to ``root``.
    """
    from subtomo_nb.io.star import write_star
    from subtomo_nb.io.subtomo import PseudoSubtomo, write_pseudo_subtomo

    rng = np.random.default_rng(seed)
    names, ctfs = [], []
    for i in range(1, n + 1):
        data = rng.standard_normal((box, box, box)).astype(np.float32)
        half = (box, box, box // 2 + 1)
        ps = PseudoSubtomo(data, rng.random(half).astype(np.float32), rng.integers(0, 5, half).astype(np.float32))
        d, w = f"Subtomograms/p{i}_data.mrc", f"Subtomograms/p{i}_weights.mrc"
        write_pseudo_subtomo(root / d, root / w, ps, pixel)
        names.append(d)
        ctfs.append(w)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.07],
            "rlnTomoTiltSeriesPixelSize": [pixel / 2],
            "rlnCtfDataAreCtfPremultiplied": [1],
            "rlnImageDimensionality": [3],
            "rlnTomoSubtomogramBinning": [2.0],
            "rlnImagePixelSize": [pixel],
            "rlnImageSize": [box],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01"] * n,
            "rlnTomoParticleName": [f"TS_01/{i}" for i in range(1, n + 1)],
            "rlnOpticsGroup": [1] * n,
            "rlnImageName": names,
            "rlnCtfImage": ctfs,
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": rng.uniform(0, 180, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": rng.normal(0, 3, n),
            "rlnOriginYAngst": rng.normal(0, 3, n),
            "rlnOriginZAngst": rng.normal(0, 3, n),
        }
    )
    star = root / "Extract" / "job001" / "particles.star"
    write_star(star, {"general": {"rlnTomoSubTomosAre2DStacks": 0}, "optics": optics, "particles": particles})
    return star


def make_stack2d_project(root: Path, n: int = 2, box: int = 8, pixel: float = 2.0, frames: str = "[1,0,1,1,0]") -> Path:
    """A small RELION 5 project with 2D stacks; returns the particles.star path."""
    from subtomo_nb.io.star import write_star
    from subtomo_nb.io.subtomo import write_stack2d

    rng = np.random.default_rng(3)
    n_visible = frames.count("1")
    names = []
    for i in range(1, n + 1):
        name = f"Extract/job002/Subtomograms/TS_01/{i}_stack2d.mrcs"
        write_stack2d(root / name, rng.standard_normal((n_visible, box, box)).astype(np.float32), pixel, float16=True)
        names.append(name)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnImageDimensionality": [2],
            "rlnTomoTiltSeriesPixelSize": [pixel],
            "rlnImageSize": [box],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01"] * n,
            "rlnOpticsGroup": [1] * n,
            "rlnImageName": names,
            "rlnTomoVisibleFrames": [frames] * n,
            "rlnAngleRot": np.zeros(n),
            "rlnAngleTilt": np.full(n, 90.0),
            "rlnAnglePsi": np.zeros(n),
            "rlnOriginXAngst": np.zeros(n),
            "rlnOriginYAngst": np.zeros(n),
            "rlnOriginZAngst": np.zeros(n),
        }
    )
    star = root / "Extract" / "job002" / "particles.star"
    write_star(star, {"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": particles})
    return star
