"""Re-centre particles on a point of the reference: ``relion_star_handler --center``.

For each particle with orientation A (``rlnAngleRot/Tilt/Psi``) and a point ``c`` of the
reference map given in pixels of that map, RELION moves the particle's origin so that the new
particle centre is the position of ``c`` in the particle::

    p = A @ c                       (pixels)
    rlnOriginXAngst -= pixel * p_x
    rlnOriginYAngst -= pixel * p_y
    rlnOriginZAngst -= pixel * p_z  (only if the column exists)

where ``pixel`` is the particle's optics-group pixel size (Å). The subtomogram orientation
(``rlnTomoSubtomogram*``) is not used: RELION 5's origins live in the subtomogram frame.
Source: RELION ``src/apps/star_handler.cpp`` (``center()``); see relion-conventions.md §3.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.particles import PIXEL_SIZE_LABELS  # RELION's ObservationModel order
from subtomo_nb.io.star import read_star, write_star



def optics_pixel_sizes(optics: pd.DataFrame, path: str | PathLike = "") -> dict[int, float]:
    """Pixel size (Å) of every optics group, with RELION's label fall-backs.

    Raises
    ------
    InputError
        If no pixel-size label is present in the optics table.
    """
    for label in PIXEL_SIZE_LABELS:
        if label in optics.columns:
            return {int(g): float(p) for g, p in zip(optics["rlnOpticsGroup"], optics[label])}
    raise InputError(what=f"optics table has none of {', '.join(PIXEL_SIZE_LABELS)}", path=str(path),
                     field="rlnImagePixelSize")


def recentre_table(
    particles: pd.DataFrame,
    centre_px: tuple[float, float, float],
    pixel_size_A: float | Mapping[int, float],
    path: str | PathLike = "",
) -> pd.DataFrame:
    """Return a re-centred copy of a particle table (the input is not modified).

    Parameters
    ----------
    particles
        RELION particle table with rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst (Z optional).
    centre_px
        Point ``(x, y, z)`` of the reference map, in pixels of that map, relative to its centre.
    pixel_size_A
        One pixel size (Å) for all particles, or a mapping optics group -> pixel size.
    path
        File name used in error messages.
    """
    for label in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        if label not in particles.columns:
            raise InputError(what="column required for re-centring is missing", path=str(path), field=label)
    angles = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(angles)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(what="angle is not a finite number", path=str(path), row=int(row) + 1,
                         field=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"][col])
    if isinstance(pixel_size_A, Mapping):
        if "rlnOpticsGroup" not in particles.columns:
            raise InputError(what="column required to find the pixel size is missing", path=str(path),
                             field="rlnOpticsGroup")
        groups = particles["rlnOpticsGroup"].to_numpy()
        missing = [g for g in np.unique(groups) if int(g) not in pixel_size_A]
        if missing:
            row = int(np.flatnonzero(groups == missing[0])[0]) + 1
            raise InputError(what=f"optics group {missing[0]} is not in the optics table", path=str(path),
                             row=row, field="rlnOpticsGroup")
        pix = np.array([pixel_size_A[int(g)] for g in groups], dtype=np.float64)
    else:
        pix = np.full(len(particles), float(pixel_size_A))
    A = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    p = A @ np.asarray(centre_px, dtype=np.float64)  # (P, 3) pixels
    out = particles.copy()
    out["rlnOriginXAngst"] = particles["rlnOriginXAngst"].to_numpy(dtype=np.float64) - pix * p[:, 0]
    out["rlnOriginYAngst"] = particles["rlnOriginYAngst"].to_numpy(dtype=np.float64) - pix * p[:, 1]
    if "rlnOriginZAngst" in particles.columns:
        out["rlnOriginZAngst"] = particles["rlnOriginZAngst"].to_numpy(dtype=np.float64) - pix * p[:, 2]
    return out


def recentre_star(
    in_path: str | PathLike,
    out_path: str | PathLike,
    centre_px: tuple[float, float, float],
    *,
    ignore_optics: bool = False,
    angpix: float = 1.0,
) -> Path:
    """``relion_star_handler --i IN --o OUT --center --center_X/Y/Z``.

    Writes a new STAR file with the same blocks, columns and column order as the input, with
    only the origins changed. The input file is never touched.

    Parameters
    ----------
    in_path, out_path
        Input and output particle STAR files (must differ).
    centre_px
        ``(--center_X, --center_Y, --center_Z)`` in pixels of the reference map.
    ignore_optics, angpix
        ``--ignore_optics --angpix``: use one pixel size (Å) instead of the optics table.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.resolve() == in_path.resolve():
        raise InputError(what="output would overwrite the input; choose another --o", path=str(in_path))
    blocks = read_star(in_path)
    name = "particles" if "particles" in blocks else next(
        (k for k, v in blocks.items() if isinstance(v, pd.DataFrame)), None)
    if name is None or not isinstance(blocks[name], pd.DataFrame):
        raise InputError(what="no particles table found", path=str(in_path), field="data_particles")
    if ignore_optics:
        pix: float | dict[int, float] = float(angpix)
    else:
        if "optics" not in blocks:
            raise InputError(what="no optics table (use --ignore_optics --angpix)", path=str(in_path),
                             field="data_optics")
        pix = optics_pixel_sizes(blocks["optics"], in_path)
    out_blocks = dict(blocks)
    out_blocks[name] = recentre_table(blocks[name], centre_px, pix, in_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_star(out_path, out_blocks)
    return out_path
