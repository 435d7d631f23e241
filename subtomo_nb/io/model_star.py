"""The class maps of a RELION ``run_itNNN_model.star`` (table ``model_classes``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from subtomo_nb.io.errors import InputError
from subtomo_nb.io.star import read_star

__all__ = ["class_maps_from_model"]


def _resolve(name: str, project_dir: Path) -> Path:
    p = Path(os.path.expandvars(str(name)))
    return p if p.is_absolute() else project_dir / p


def class_maps_from_model(
    model_star: str | os.PathLike,
    *,
    select_largest_class: bool = False,
    select_highest_resol: bool = False,
    project_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Class maps named in a ``run_itNNN_model.star`` (table ``model_classes``).

    Parameters
    ----------
    model_star
        The model STAR file.
    select_largest_class
        Return only the class with the largest ``rlnClassDistribution`` (first on ties).
    select_highest_resol
        Return only the class with the smallest ``rlnEstimatedResolution`` (first on ties).
    project_dir
        Directory the ``rlnReferenceImage`` paths are relative to (RELION's working directory;
        default the current directory).

    Returns
    -------
    list of pathlib.Path
        One path with a selection flag, else every class in file order.

    Raises
    ------
    InputError
        No ``model_classes`` table, a missing column, or a class map that does not exist
        (named with its row and field).
    ValueError
        Both selection flags.
    """
    path = Path(model_star)
    if select_largest_class and select_highest_resol:
        raise ValueError("select either the largest class or the highest-resolution class, not both")
    blocks = read_star(path)
    table = blocks.get("model_classes")
    if table is None or not hasattr(table, "columns") or len(table) == 0:
        raise InputError(path, "no class table (data_model_classes) with rows in this STAR file")
    needed = ["rlnReferenceImage"]
    if select_largest_class:
        needed.append("rlnClassDistribution")
    if select_highest_resol:
        needed.append("rlnEstimatedResolution")
    for label in needed:
        if label not in table.columns:
            raise InputError(path, "column missing from data_model_classes", field=label)
    rows = list(range(len(table)))
    if select_largest_class:
        rows = [int(np.argmax(table["rlnClassDistribution"].to_numpy(dtype=np.float64)))]
    elif select_highest_resol:
        rows = [int(np.argmin(table["rlnEstimatedResolution"].to_numpy(dtype=np.float64)))]
    root = Path.cwd() if project_dir is None else Path(project_dir)
    out = []
    for i in rows:
        name = str(table["rlnReferenceImage"].iloc[i])
        p = _resolve(name, root)
        if not p.is_file():
            raise InputError(path, f"class map {name} not found (looked for {p})", row=i + 1, field="rlnReferenceImage")
        out.append(p)
    return out
