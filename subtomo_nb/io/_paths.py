"""Resolution of the relative file names written in RELION STAR files.

RELION programs run in the project directory and write file names relative to it (e.g.
``Extract/job012/Subtomograms/TS_01/1_data.mrc``), whatever directory the STAR file is in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["split_image_name", "find_project_dir", "resolve_relative", "project_relative"]

_STACK_INDEX = re.compile(r"^(\d+)@(.+)$")


def split_image_name(name: str) -> tuple[int | None, str]:
    """Split RELION's ``"<n>@<file>"`` image name.

    Parameters
    ----------
    name : str
        ``"12@Extract/stack.mrcs"`` or ``"Subtomograms/p1_data.mrc"``.

    Returns
    -------
    index : int or None
        1-based image index in the stack, or None when there is no ``@`` prefix.
    file_name : str
        The file part.
    """
    m = _STACK_INDEX.match(str(name).strip())
    if m:
        return int(m.group(1)), m.group(2)
    return None, str(name).strip()


def find_project_dir(star_path: str | os.PathLike, file_name: str | None) -> Path:
    """Guess the RELION project directory of a STAR file.

    The project directory is the nearest directory, starting with the STAR file's own and going
    up through its ancestors, in which the (relative) ``file_name`` exists. If ``file_name`` is
    missing, absolute, or found nowhere, the current working directory is returned.

    Parameters
    ----------
    star_path : str or os.PathLike
        The STAR file.
    file_name : str or None
        A relative file name taken from the STAR file (a ``"<n>@"`` prefix is removed).

    Returns
    -------
    pathlib.Path
        Absolute directory.
    """
    if file_name:
        _, rel = split_image_name(file_name)
        if rel and not os.path.isabs(rel):
            start = Path(star_path).resolve().parent
            for candidate in (start, *start.parents):
                if (candidate / rel).exists():
                    return candidate
    return Path.cwd()


def resolve_relative(project_dir: str | os.PathLike | None, file_name: str) -> Path:
    """Absolute path of a file name from a STAR file (``"<n>@"`` prefix removed).

    Parameters
    ----------
    project_dir : str or os.PathLike or None
        Directory relative names are taken from; None means the current directory.
    file_name : str
        File name as written in the STAR file.

    Returns
    -------
    pathlib.Path
    """
    _, rel = split_image_name(file_name)
    p = Path(rel)
    if p.is_absolute():
        return p
    base = Path(project_dir) if project_dir is not None else Path.cwd()
    return base / p


def project_relative(path: str | os.PathLike, project_dir: str | os.PathLike | None) -> str:
    """The name to write in a STAR file for ``path``: the inverse of :func:`resolve_relative`.

    Relative to ``project_dir`` (None: the current directory) when the file lies under it, as
    RELION writes names; absolute otherwise, so that resolving the name against the project
    directory finds the file again wherever it is.

    Examples
    --------
    >>> project_relative("/data/proj/Refine3D/job002/run_data.star", "/data/proj")
    'Refine3D/job002/run_data.star'
    >>> project_relative("/scratch/run_data.star", "/data/proj")
    '/scratch/run_data.star'
    """
    p = Path(path).absolute()
    base = (Path(project_dir) if project_dir is not None else Path.cwd()).absolute()
    try:
        rel = os.path.relpath(p, base)
    except ValueError:          # another drive (Windows)
        return str(p)
    return str(p) if rel == ".." or rel.startswith(".." + os.sep) else rel
