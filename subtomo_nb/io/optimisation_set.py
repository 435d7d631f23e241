"""RELION tomography optimisation sets (``optimisation_set.star``).

A single list-style (key/value) block naming the files of a tomography job:
``rlnTomoParticlesFile``, ``rlnTomoTomogramsFile``, ``rlnTomoManifoldsFile``,
``rlnTomoTrajectoriesFile``, ``rlnTomoReferenceMap1File``, ``rlnTomoReferenceMap2File``,
``rlnTomoReferenceMaskFile``, ``rlnTomoReferenceFscFile``. All are optional; any other labels
are kept. RELION's C++ writers name the block ``data_`` (empty name), the Python tools
``data_optimisation_set``; readers take the first block whatever its name. File names are
relative to the RELION project directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import pandas as pd

from ._paths import find_project_dir, resolve_relative
from .errors import InputError
from .star import read_star, write_star

__all__ = [
    "OptimisationSet",
    "read_optimisation_set",
    "write_optimisation_set",
    "resolve",
    "OPTIMISATION_SET_LABELS",
]

#: The file labels RELION defines for optimisation sets, in RELION's order.
OPTIMISATION_SET_LABELS = (
    "rlnTomoParticlesFile",
    "rlnTomoTomogramsFile",
    "rlnTomoManifoldsFile",
    "rlnTomoTrajectoriesFile",
    "rlnTomoReferenceMap1File",
    "rlnTomoReferenceMap2File",
    "rlnTomoReferenceMaskFile",
    "rlnTomoReferenceFscFile",
)


class OptimisationSet(MutableMapping):
    """Ordered mapping label -> file name (str; ``""`` for an empty entry).

    Parameters
    ----------
    entries : mapping of str to str, optional
        Initial entries, in order.
    path : str or os.PathLike, optional
        The file it was read from.
    project_dir : str or os.PathLike, optional
        Directory relative names are resolved against (see :meth:`resolve`).

    Attributes
    ----------
    path : pathlib.Path or None
    project_dir : pathlib.Path or None
    """

    def __init__(
        self,
        entries: dict[str, str] | None = None,
        path: str | os.PathLike | None = None,
        project_dir: str | os.PathLike | None = None,
    ) -> None:
        self._entries: dict[str, str] = {}
        for key, value in (entries or {}).items():
            self[key] = value
        self.path = None if path is None else Path(path)
        self.project_dir = None if project_dir is None else Path(project_dir)

    def __getitem__(self, label: str) -> str:
        return self._entries[label]

    def __setitem__(self, label: str, value: str | os.PathLike) -> None:
        if not isinstance(label, str) or not label.startswith("rln"):
            raise KeyError(f"optimisation-set labels are RELION labels (rln...), got {label!r}")
        self._entries[label] = "" if value is None else os.fspath(value) if isinstance(value, os.PathLike) else str(value)

    def __delitem__(self, label: str) -> None:
        del self._entries[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"OptimisationSet({self._entries!r}, path={self.path!r})"

    def to_dict(self) -> dict[str, str]:
        """Plain ordered dict copy."""
        return dict(self._entries)

    def resolve(self, label: str, project_dir: str | os.PathLike | None = None) -> Path | None:
        """Absolute path of the file behind ``label``, or None when absent or empty.

        Parameters
        ----------
        label : str
            E.g. ``"rlnTomoParticlesFile"``.
        project_dir : str or os.PathLike, optional
            Overrides :attr:`project_dir`. When neither is set, the nearest directory (the
            file's own, then up) where the named file exists; else the current directory.
        """
        return resolve(self, label, project_dir)

    # Convenience accessors for the common entries -------------------------------------------
    @property
    def particles_file(self) -> str | None:
        """``rlnTomoParticlesFile`` (None when absent or empty)."""
        return self._entries.get("rlnTomoParticlesFile") or None

    @property
    def tomograms_file(self) -> str | None:
        """``rlnTomoTomogramsFile`` (None when absent or empty)."""
        return self._entries.get("rlnTomoTomogramsFile") or None

    @property
    def trajectories_file(self) -> str | None:
        """``rlnTomoTrajectoriesFile`` (None when absent or empty)."""
        return self._entries.get("rlnTomoTrajectoriesFile") or None


def resolve(oset: OptimisationSet, label: str, project_dir: str | os.PathLike | None = None) -> Path | None:
    """Absolute path of an optimisation-set entry (see :meth:`OptimisationSet.resolve`)."""
    name = oset.get(label, "")
    if not name or not name.strip():
        return None
    base = project_dir if project_dir is not None else oset.project_dir
    if base is None:
        base = find_project_dir(oset.path, name) if oset.path is not None else Path.cwd()
    return resolve_relative(base, name)


def read_optimisation_set(path: str | os.PathLike, project_dir: str | os.PathLike | None = None) -> OptimisationSet:
    """Read an optimisation set (the first block of the file, whatever its name).

    Parameters
    ----------
    path : str or os.PathLike
        The STAR file. Only read.
    project_dir : str or os.PathLike, optional
        Stored as :attr:`OptimisationSet.project_dir` for :meth:`OptimisationSet.resolve`.

    Returns
    -------
    OptimisationSet

    Raises
    ------
    InputError
        Missing/bad file, or a first block that is a table with more than one row.
    """
    p = Path(path)
    blocks = read_star(p)
    name, block = next(iter(blocks.items()))
    if isinstance(block, pd.DataFrame):  # a one-row loop is accepted, as RELION does
        if len(block) != 1:
            raise InputError(p, f"optimisation set block data_{name} must be a list (one entry per label), found a table of {len(block)} rows")
        block = {k: v for k, v in block.iloc[0].items()}
    entries = {}
    for key, value in block.items():
        entries[key] = "" if value is None or (isinstance(value, float) and value != value) else str(value)
    return OptimisationSet(entries, path=p, project_dir=project_dir)


def write_optimisation_set(path: str | os.PathLike, oset: OptimisationSet) -> None:
    """Write an optimisation set as a list-style block ``data_optimisation_set``.

    Empty entries are written as ``""`` (as RELION does).
    """
    write_star(Path(path), {"optimisation_set": oset.to_dict()})
