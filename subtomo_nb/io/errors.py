"""Errors raised by the I/O layer for bad input files.

Every problem with a file the user gave us (missing, unparseable, inconsistent) is reported as
an :class:`InputError` that names the file and, where it applies, the 1-based data row and the
STAR label (field) concerned, so that a user can open the file and fix it.
"""

from __future__ import annotations

import os

__all__ = ["InputError"]


class InputError(ValueError):
    """A bad input file (or a bad value in it).

    The message reads ``"<path>: row <row>, field <field>: <what>"``; the row and field parts
    are left out when they are ``None``.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file concerned.
    what : str
        What is wrong, in words.
    row : int, optional
        1-based index of the data row (loop row) of a STAR table, if the problem is in one row.
    field : str, optional
        STAR label (e.g. ``"rlnAngleRot"``) or other named item the problem concerns.

    Attributes
    ----------
    path : str or None
        The file, as given.
    row : int or None
        1-based data row, or None.
    field : str or None
        STAR label, or None.
    what : str
        The bare description, without the location prefix.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        what: str,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else os.fspath(path)
        self.row = None if row is None else int(row)
        self.field = field
        self.what = what
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field {self.field}")
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if where:
            parts.append(", ".join(where))
        parts.append(self.what)
        return ": ".join(parts)

    def __reduce__(self):  # keep the attributes across pickling (multiprocessing, dask)
        return (type(self), (self.path, self.what, self.row, self.field))
