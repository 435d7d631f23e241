"""relion_align_symmetry on files: a map, or the classes of a model.star (conventions §7.3).

:func:`align_symmetry_file` reads the map (or picks or tries the classes of a
``run_itNNN_model.star``) and runs :func:`~subtomo_nb.initial_model.align_symmetry.align_symmetry`
on it; the job around it (values, the output file, ``subtomo align-symmetry``) is
:mod:`subtomo_nb.jobs.align_symmetry`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from subtomo_nb.geometry.symmetry import point_group
from subtomo_nb.initial_model.align_symmetry import AlignResult, align_symmetry
from subtomo_nb.io.model_star import class_maps_from_model
from subtomo_nb.io.mrc import read_map

__all__ = ["align_symmetry_file"]

Report = Callable[[str], None]


def _is_model_star(path: Path) -> bool:
    return path.suffix.lower() == ".star"


def align_symmetry_file(
    path: str | os.PathLike,
    sym: str,
    *,
    project_dir: str | os.PathLike | None = None,
    select_largest_class: bool = False,
    select_highest_resol: bool = False,
    angpix: float = -1,
    progress: Report | None = None,
    **options: Any,
) -> AlignResult:
    """:func:`align_symmetry` on a map file or on the classes of a model.star.

    With a model.star and no selection flag every class is aligned and the one with the lowest
    diff2 is returned (RELION); in C1 a selection flag is then required.

    Parameters
    ----------
    path
        MRC map or ``run_itNNN_model.star``.
    sym
        Target point group.
    project_dir
        Directory the model.star's class paths are relative to (default: current directory).
    select_largest_class, select_highest_resol
        Class choice for a model.star input.
    angpix
        Pixel size (Å); ``<= 0``: from the map header.
    progress
        Called with a message at each stage.
    **options
        Keyword options of :func:`align_symmetry`.

    Returns
    -------
    AlignResult
        ``source`` names the map that was aligned.

    Raises
    ------
    InputError
        Missing or unreadable files (named).
    ValueError
        Unknown symmetry or inconsistent options.
    """
    path = Path(path)
    say = progress if progress is not None else (lambda _message: None)
    ops = point_group(sym)  # unknown name: ValueError before any file is read
    if _is_model_star(path):
        if len(ops) == 1 and not (select_largest_class or select_highest_resol):
            raise ValueError("in symmetry C1 a class must be selected by size (--select_largest_class) "
                             "or by resolution (--select_highest_resol)")
        sources = class_maps_from_model(path, select_largest_class=select_largest_class,
                                        select_highest_resol=select_highest_resol, project_dir=project_dir)
    else:
        sources = [path]
    best: AlignResult | None = None
    scores: dict[str, float] = {}
    for src in sources:
        say(f"reading {src}")
        vol, header_px = read_map(src, require_cube=True)
        px = float(angpix) if angpix is not None and angpix > 0 else float(header_px)
        result = align_symmetry(vol, sym, px, progress=progress, **options)
        result.source = src
        scores[str(src)] = result.score
        if len(sources) > 1:
            say(f"{src.name}: diff2 {result.score:.6g}")
        if best is None or result.score < best.score:  # first best kept on ties, as RELION
            best = result
    assert best is not None
    best.scores = scores
    return best
