"""RELION STAR files: read through ``starfile``, write losslessly in RELION's layout.

A STAR file is an ordered set of data blocks (``data_<name>``). A block is either a *loop*
(a table: ``loop_``, one ``_rlnLabel #i`` line per column, then one line per row) or a
*list* (key/value lines ``_rlnLabel value``). :func:`read_star` returns them as an ordered
``dict`` mapping the block name (without ``data_``; ``""`` for a bare ``data_``) to a
:class:`pandas.DataFrame` (loop) or a ``dict`` (list).

:func:`write_star` writes RELION's layout (a ``# version 50001`` line before every block) with
every floating-point value in its shortest round-trip form (``repr``), so that
read -> write -> read gives bitwise-identical floats, the same integers and the same strings,
the same block names and order, and the same columns in the same order.

Column labels are checked against the RELION 5 label list shipped with this package
(``relion_labels.txt``, the names registered in RELION's ``src/metadata_label.h``).
"""

from __future__ import annotations

import functools
import importlib.resources
import numbers
import os
import re
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
import starfile

from .errors import InputError

__all__ = [
    "StarBlock",
    "read_star",
    "write_star",
    "relion_labels",
    "is_relion_label",
    "format_star_value",
    "VERSION_LINE",
]

#: Header line RELION 5 writes before every data block.
VERSION_LINE = "# version 50001"

#: A block as returned by :func:`read_star`: a loop table or a list (key -> value) block.
StarBlock = Union[pd.DataFrame, dict]

_TOKEN = re.compile(r'"[^"]*"|\'[^\']*\'|\S+')
_NEEDS_QUOTES = ("\"", "'", "#", "_", "data_", "loop_", "stop_", "save_", "global_")


@functools.lru_cache(maxsize=1)
def relion_labels() -> frozenset[str]:
    """The RELION 5 metadata label names (without the leading underscore).

    Returns
    -------
    frozenset of str
        Names such as ``"rlnAngleRot"``, read from the package data file ``relion_labels.txt``.
    """
    text = importlib.resources.files(__package__).joinpath("relion_labels.txt").read_text()
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )


def is_relion_label(name: str) -> bool:
    """Whether ``name`` (e.g. ``"rlnImageName"``, no underscore) is a RELION 5 label."""
    return name in relion_labels()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class _BlockLayout:
    """What a structural scan of the text found for one data block."""

    name: str
    line: int
    kind: str = "empty"  # "loop", "list" or "empty"
    labels: list[str] = field(default_factory=list)
    nrows: int = 0


def _scan(path: Path, text: str) -> list[_BlockLayout]:
    """Check the block/loop structure of a STAR text and return its layout.

    Raises
    ------
    InputError
        On text outside a data block, a loop without labels, a row with the wrong number of
        values (with its 1-based row), a list line without exactly one value, duplicate labels
        or duplicate block names.
    """
    blocks: list[_BlockLayout] = []
    cur: _BlockLayout | None = None
    in_loop_header = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            if cur is not None and cur.kind == "loop" and not cur.labels:
                raise InputError(path, f"loop_ without labels in block data_{cur.name} (line {cur.line})")
            cur = _BlockLayout(name=line[5:], line=lineno)
            if any(b.name == cur.name for b in blocks):
                raise InputError(path, f"duplicate block data_{cur.name} (line {lineno})")
            blocks.append(cur)
            in_loop_header = False
            continue
        if cur is None:
            raise InputError(path, f"line {lineno}: text before the first data_ block: {line[:60]!r}")
        if line.startswith("loop_"):
            if cur.kind != "empty":
                raise InputError(path, f"line {lineno}: second loop_ in block data_{cur.name}")
            cur.kind = "loop"
            in_loop_header = True
            continue
        if line.startswith("_"):
            label = line.split()[0][1:]
            if cur.kind == "loop":
                if not in_loop_header:
                    raise InputError(
                        path, f"line {lineno}: label after the data rows of block data_{cur.name}", field=label
                    )
            else:
                cur.kind = "list"
                tokens = _TOKEN.findall(line)
                if len(tokens) != 2:
                    raise InputError(
                        path,
                        f"line {lineno}: a list entry needs exactly one value, found {len(tokens) - 1}",
                        field=label,
                    )
            if label in cur.labels:
                raise InputError(path, f"line {lineno}: duplicate label in block data_{cur.name}", field=label)
            cur.labels.append(label)
            continue
        if cur.kind != "loop":
            raise InputError(path, f"line {lineno}: unexpected text in block data_{cur.name}: {line[:60]!r}")
        if not cur.labels:
            raise InputError(path, f"line {lineno}: loop_ without labels in block data_{cur.name}")
        in_loop_header = False
        n = len(_TOKEN.findall(line))
        cur.nrows += 1
        if n != len(cur.labels):
            raise InputError(
                path,
                f"{n} values for {len(cur.labels)} labels in block data_{cur.name} (line {lineno})",
                row=cur.nrows,
            )
    if cur is not None and cur.kind == "loop" and not cur.labels:
        raise InputError(path, f"loop_ without labels in block data_{cur.name} (line {cur.line})")
    if not blocks:
        raise InputError(path, "no data_ block found (not a STAR file?)")
    return blocks


def _strip_for_starfile(text: str, layout: list[_BlockLayout]) -> str:
    """Text without comment lines and without empty blocks (which confuse ``starfile``)."""
    empty_lines = {b.line for b in layout if b.kind == "empty"}
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        s = raw.strip()
        if s.startswith("#") or lineno in empty_lines:
            continue
        out.append(raw)
    return "\n".join(out) + "\n"


def read_star(path: str | os.PathLike, *, check_labels: bool = True) -> dict[str, StarBlock]:
    """Read all data blocks of a STAR file.

    Parameters
    ----------
    path : str or os.PathLike
        The STAR file. It is only read, never modified.
    check_labels : bool, default True
        Reject column labels that are not RELION 5 labels.

    Returns
    -------
    dict of str to (pandas.DataFrame or dict)
        Block name (``"optics"`` for ``data_optics``; ``""`` for ``data_``) to a DataFrame for
        a loop block (columns in file order; numeric columns as int64/float64, text as str) or
        a ``dict`` label -> value (int, float or str) for a list block; in file order.

    Raises
    ------
    InputError
        If the file is missing or unreadable, is not a well-formed STAR file (the row is named
        for a loop row with the wrong number of values), or uses an unknown label (named as the
        field).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if not p.is_file():
        raise InputError(p, "not a regular file")
    try:
        text = p.read_text()
    except UnicodeDecodeError as exc:
        raise InputError(p, f"not a text STAR file ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise InputError(p, f"cannot read file: {exc.strerror or exc}") from exc
    if "\x00" in text:
        raise InputError(p, "not a text STAR file (contains NUL bytes)")

    layout = _scan(p, text)
    if check_labels:
        known = relion_labels()
        for b in layout:
            for label in b.labels:
                if label not in known:
                    raise InputError(
                        p, f"unknown label in block data_{b.name} (not a RELION 5 metadata label)", field=label
                    )

    needs_cleaning = any(b.kind == "empty" or (b.kind == "loop" and b.nrows == 0) for b in layout)
    try:
        if needs_cleaning:
            with tempfile.TemporaryDirectory(prefix="subtomo_star_") as tmp:
                tmp_path = Path(tmp) / p.name
                tmp_path.write_text(_strip_for_starfile(text, layout))
                parsed = starfile.read(tmp_path, always_dict=True)
        else:
            parsed = starfile.read(p, always_dict=True)
    except InputError:
        raise
    except Exception as exc:  # starfile/pandas raise many kinds of errors on bad text
        raise InputError(p, f"cannot parse STAR file: {type(exc).__name__}: {exc}") from exc

    result: dict[str, StarBlock] = {}
    for b in layout:
        if b.kind == "empty":
            result[b.name] = {}
            continue
        if b.name not in parsed:
            raise InputError(p, f"cannot parse block data_{b.name} (line {b.line})")
        block = parsed[b.name]
        if b.kind == "loop":
            if not isinstance(block, pd.DataFrame):
                raise InputError(p, f"cannot parse loop block data_{b.name} (line {b.line})")
            if b.nrows == 0:
                block = pd.DataFrame({c: pd.Series([], dtype=float) for c in b.labels})
            if list(block.columns) != b.labels or len(block) != b.nrows:
                raise InputError(p, f"cannot parse loop block data_{b.name} (line {b.line})")
            block = block.reset_index(drop=True)
            block.attrs = {}
        else:
            if not isinstance(block, dict) or list(block) != b.labels:
                raise InputError(p, f"cannot parse list block data_{b.name} (line {b.line})")
            block = dict(block)
        result[b.name] = block
    if list(parsed) != [b.name for b in layout if b.kind != "empty"]:
        raise InputError(p, "block structure not understood (blocks found: " + ", ".join(map(str, parsed)) + ")")
    return result


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _quote(s: str) -> str:
    if s == "":
        return '""'
    if any(ch.isspace() for ch in s) or "#" in s or s.startswith(_NEEDS_QUOTES):
        if '"' not in s:
            return f'"{s}"'
        if "'" not in s:
            return f"'{s}'"
        raise ValueError(f"cannot write a STAR value containing both quote characters: {s!r}")
    return s


def format_star_value(value: Any) -> str:
    """Format one value for a STAR file.

    Floats use the shortest representation that reads back to the same double (``repr``);
    integers and booleans are written as integers; sequences as RELION vectors ``[a,b,c]``;
    strings are quoted when empty or when they contain white space.

    Parameters
    ----------
    value : Any
        A scalar (int, float, bool, str, numpy scalar), ``None``/NA, or a 1-D sequence.

    Returns
    -------
    str
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return "nan"
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bytes):
        return _quote(value.decode())
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ",".join(format_star_value(v) for v in np.asarray(value).ravel().tolist()) + "]"
    if isinstance(value, os.PathLike):
        return _quote(os.fspath(value))
    raise TypeError(f"cannot write a value of type {type(value).__name__} to a STAR file: {value!r}")


def _format_column(col: pd.Series) -> list[str]:
    kind = col.dtype.kind
    if kind == "f":
        return [repr(v) for v in col.to_numpy(dtype=np.float64).tolist()]
    if kind in "iu":
        return [str(v) for v in col.tolist()]
    if kind == "b":
        return ["1" if v else "0" for v in col.tolist()]
    if kind == "c":
        raise TypeError(f"cannot write complex column {col.name!r} to a STAR file")
    return [format_star_value(v) for v in col.tolist()]


def _check_label(path: Path, label: Any, block: str, check_labels: bool) -> str:
    if not isinstance(label, str) or not label or any(ch.isspace() for ch in label):
        raise InputError(path, f"invalid column label {label!r} in block data_{block}")
    if label.startswith("_"):
        raise InputError(path, f"label written without the leading underscore expected, got {label!r}", field=label)
    if check_labels and label not in relion_labels():
        raise InputError(path, f"unknown label in block data_{block} (not a RELION 5 metadata label)", field=label)
    return label


def _block_lines(path: Path, name: str, block: Any, check_labels: bool) -> list[str]:
    if not isinstance(name, str) or any(ch.isspace() for ch in name):
        raise InputError(path, f"invalid block name {name!r}")
    lines = ["", VERSION_LINE, "", f"data_{name}", ""]
    if isinstance(block, pd.Series):
        block = block.to_dict()
    if isinstance(block, pd.DataFrame):
        labels = [_check_label(path, c, name, check_labels) for c in block.columns]
        if len(set(labels)) != len(labels):
            raise InputError(path, f"duplicate column labels in block data_{name}")
        lines.append("loop_")
        lines.extend(f"_{label} #{i}" for i, label in enumerate(labels, start=1))
        if len(block.columns):
            columns = [_format_column(block.iloc[:, j]) for j in range(block.shape[1])]
            lines.extend(" ".join(row) for row in zip(*columns))
        lines.append("")
    elif isinstance(block, Mapping):
        labels = [_check_label(path, k, name, check_labels) for k in block]
        width = max((len(k) for k in labels), default=0) + 1
        for label, value in zip(labels, block.values()):
            lines.append(f"_{label:<{width}} {format_star_value(value)}")
        lines.append("")
    else:
        raise InputError(path, f"block data_{name} is a {type(block).__name__}, expected a DataFrame or a dict")
    return lines


def write_star(
    path: str | os.PathLike,
    blocks: Mapping[str, StarBlock],
    *,
    check_labels: bool = True,
) -> None:
    """Write data blocks to a STAR file in RELION 5's layout.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; written atomically (a temporary file in the same directory, then renamed).
    blocks : Mapping of str to (pandas.DataFrame or dict)
        Block name (without ``data_``) to a DataFrame (written as a loop, columns in order,
        the index ignored) or a dict (written as a list block), in the order to write.
    check_labels : bool, default True
        Refuse labels that are not RELION 5 labels.

    Raises
    ------
    InputError
        On an unknown or invalid label (named as the field) or an unsupported block.
    """
    p = Path(path)
    if not isinstance(blocks, Mapping):
        raise TypeError("blocks must be a mapping block name -> DataFrame or dict")
    lines: list[str] = []
    for name, block in blocks.items():
        lines.extend(_block_lines(p, name, block, check_labels))
    text = "\n".join(lines) + "\n"
    _atomic_write_text(p, text)


def _atomic_write_text(path: Path, text: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "x") as fh:  # permissions follow the umask, unlike mkstemp
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

