"""Tiny RELION project files for the job tests (written with subtomo_nb.io.write_star)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from subtomo_nb.io import write_star


def write_particles(path: Path, n: int = 5, *, box: int = 32, pixel: float = 6.0, seed: int = 0,
                    with_origins: bool = True) -> Path:
    """A particle STAR file (optics + particles with angles and origins), like run_data.star."""
    rng = np.random.default_rng(seed)
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [pixel],
        "rlnImageSize": [box], "rlnImageDimensionality": [3],
    })
    parts = {
        "rlnTomoName": ["TS_01"] * n,
        "rlnTomoParticleName": [f"TS_01/{i + 1}" for i in range(n)],
        "rlnCenteredCoordinateXAngst": rng.uniform(-500, 500, n),
        "rlnCenteredCoordinateYAngst": rng.uniform(-500, 500, n),
        "rlnCenteredCoordinateZAngst": rng.uniform(-100, 100, n),
        "rlnAngleRot": rng.uniform(-180, 180, n),
        "rlnAngleTilt": rng.uniform(0, 180, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n),
        "rlnOpticsGroup": [1] * n,
    }
    if with_origins:
        parts.update({"rlnOriginXAngst": np.zeros(n), "rlnOriginYAngst": np.zeros(n), "rlnOriginZAngst": np.zeros(n)})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_star(path, {"general": {"rlnTomoSubTomosAre2DStacks": 0}, "optics": optics,
                      "particles": pd.DataFrame(parts)})
    return path


def write_optimisation_set(path: Path, particles: str, tomograms: str = "") -> Path:
    """An optimisation set naming a particle file (and a tomogram set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_star(path, {"optimisation_set": {"rlnTomoParticlesFile": particles, "rlnTomoTomogramsFile": tomograms}})
    return path


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative name -> hash)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
