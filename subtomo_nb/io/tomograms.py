"""RELION 5 tomogram sets (``tomograms.star``) and their tilt-series tables.

``tomograms.star`` has a ``data_global`` loop with one row per tomogram (``rlnTomoName``,
``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
``rlnTomoTiltSeriesPixelSize``, ``rlnTomoHand``, ``rlnTomoSizeX/Y/Z`` in unbinned tilt-series
pixels, ...). In RELION 5 each row names a tilt-series STAR file (``rlnTomoTiltSeriesStarFile``,
relative to the project directory) whose block ``data_<rlnTomoName>`` has one row per tilt
image, in frame order (``rlnTomoXTilt``, ``rlnTomoYTilt``, ``rlnTomoZRot`` in degrees,
``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst`` in Å, ``rlnDefocusU/V`` in Å,
``rlnDefocusAngle`` in degrees, ``rlnMicrographPreExposure`` in e/Å², ...). Older files keep
the tilt-series tables as extra ``data_<rlnTomoName>`` blocks of ``tomograms.star`` itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._paths import find_project_dir, resolve_relative
from .errors import InputError
from .star import StarBlock, read_star, write_star

__all__ = [
    "TomogramSet",
    "read_tomograms",
    "write_tomograms",
    "GLOBAL_REQUIRED",
    "TILT_SERIES_REQUIRED",
]

#: Columns every ``data_global`` row needs.
GLOBAL_REQUIRED = (
    "rlnTomoName",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnTomoTiltSeriesPixelSize",
    "rlnTomoHand",
    "rlnTomoSizeX",
    "rlnTomoSizeY",
    "rlnTomoSizeZ",
)
#: Columns every tilt-series table needs (rlnTomoXTilt is optional, 0 when absent).
TILT_SERIES_REQUIRED = (
    "rlnTomoYTilt",
    "rlnTomoZRot",
    "rlnTomoXShiftAngst",
    "rlnTomoYShiftAngst",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnMicrographPreExposure",
)
_TILT_SERIES_NUMERIC = TILT_SERIES_REQUIRED + ("rlnTomoXTilt", "rlnCtfScalefactor", "rlnCtfBfactor", "rlnPhaseShift")
_GLOBAL_NUMERIC = GLOBAL_REQUIRED[1:]
_FILE_LABEL = "rlnTomoTiltSeriesStarFile"


@dataclass
class TomogramSet:
    """A tomogram set.

    Attributes
    ----------
    global_table : pandas.DataFrame
        ``data_global``, one row per tomogram.
    tilt_series : dict of str to pandas.DataFrame
        ``rlnTomoName`` -> tilt-series table (one row per tilt image, frame order). Tomograms
        whose file gives no tilt series (e.g. RELION 4 pseudo-subtomogram projects) are absent.
    path : pathlib.Path or None
        The ``tomograms.star`` it was read from.
    project_dir : pathlib.Path or None
        Directory the tilt-series file names are relative to.
    embedded : bool
        True when the tilt-series tables were blocks of ``tomograms.star`` itself.
    """

    global_table: pd.DataFrame
    tilt_series: dict[str, pd.DataFrame] = field(default_factory=dict)
    path: Path | None = None
    project_dir: Path | None = None
    embedded: bool = False

    @property
    def names(self) -> list[str]:
        """Tomogram names in table order."""
        return [str(n) for n in self.global_table["rlnTomoName"].tolist()]

    def row(self, name: str) -> pd.Series:
        """The ``data_global`` row of a tomogram."""
        match = np.flatnonzero(self.global_table["rlnTomoName"].astype(str).to_numpy() == str(name))
        if match.size == 0:
            raise InputError(self.path, f"tomogram {name!r} is not in data_global", field="rlnTomoName")
        return self.global_table.iloc[int(match[0])]

    def tilt_table(self, name: str) -> pd.DataFrame:
        """The tilt-series table of a tomogram."""
        try:
            return self.tilt_series[str(name)]
        except KeyError:
            raise InputError(self.path, f"no tilt-series table for tomogram {name!r}", field=_FILE_LABEL) from None


def _numeric_check(path: Path, table: pd.DataFrame, labels, block: str) -> None:
    for label in labels:
        if label not in table.columns:
            continue
        raw = table[label]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(path, f"{raw.iloc[i]!r} in data_{block} is not a finite number", row=i + 1, field=label)


def _validate_global(path: Path, table: pd.DataFrame) -> None:
    for label in GLOBAL_REQUIRED:
        if label not in table.columns:
            raise InputError(path, "required column missing from data_global", field=label)
    names = table["rlnTomoName"].astype(str).tolist()
    for i, name in enumerate(names):
        if not name.strip() or name in names[:i]:
            what = "empty tomogram name" if not name.strip() else f"tomogram {name!r} listed twice"
            raise InputError(path, what, row=i + 1, field="rlnTomoName")
    _numeric_check(path, table, _GLOBAL_NUMERIC, "global")


def _validate_tilt_series(path: Path, table: pd.DataFrame, name: str) -> None:
    if len(table) == 0:
        raise InputError(path, f"tilt series data_{name} has no tilt images")
    for label in TILT_SERIES_REQUIRED:
        if label not in table.columns:
            raise InputError(path, f"required column missing from tilt series data_{name}", field=label)
    _numeric_check(path, table, _TILT_SERIES_NUMERIC, name)


def _as_table(block: StarBlock) -> pd.DataFrame:
    if isinstance(block, pd.DataFrame):
        return block.reset_index(drop=True)
    return pd.DataFrame({k: [v] for k, v in block.items()})


def read_tomograms(
    path: str | os.PathLike,
    project_dir: str | os.PathLike | None = None,
    *,
    require_tilt_series: bool = False,
) -> TomogramSet:
    """Read a tomogram set and its tilt-series tables.

    Parameters
    ----------
    path : str or os.PathLike
        ``tomograms.star``. Only read.
    project_dir : str or os.PathLike, optional
        RELION project directory for the relative ``rlnTomoTiltSeriesStarFile`` names; by default
        the nearest directory (the STAR file's own, then up) where the first of them exists.
    require_tilt_series : bool, default False
        Fail if a tomogram has no tilt-series table.

    Returns
    -------
    TomogramSet

    Raises
    ------
    InputError
        Missing/bad files; no ``data_global``; missing required columns; NaN values (row and
        field named); duplicate tomogram names; a tilt-series file without its
        ``data_<rlnTomoName>`` block.
    """
    p = Path(path)
    blocks = read_star(p)
    if "global" not in blocks:
        raise InputError(p, "no data_global block (not a RELION tomogram set)")
    table = _as_table(blocks["global"])
    _validate_global(p, table)
    names = table["rlnTomoName"].astype(str).tolist()

    if project_dir is not None:
        proj = Path(project_dir).absolute()
    elif _FILE_LABEL in table.columns and len(table):
        proj = find_project_dir(p, str(table[_FILE_LABEL].iloc[0]))
    else:
        proj = Path(p).absolute().parent

    tilt: dict[str, pd.DataFrame] = {}
    embedded = _FILE_LABEL not in table.columns
    for i, name in enumerate(names):
        if not embedded:
            ts_name = str(table[_FILE_LABEL].iloc[i])
            if not ts_name.strip():
                raise InputError(p, "empty tilt-series file name", row=i + 1, field=_FILE_LABEL)
            ts_path = resolve_relative(proj, ts_name)
            if not ts_path.exists():
                raise InputError(p, f"tilt-series file not found: {ts_path}", row=i + 1, field=_FILE_LABEL)
            ts_blocks = read_star(ts_path)
            if name not in ts_blocks:
                raise InputError(ts_path, f"no data_{name} block for tomogram {name!r}")
            ts = _as_table(ts_blocks[name])
            _validate_tilt_series(ts_path, ts, name)
            tilt[name] = ts
        elif name in blocks and name != "global":
            ts = _as_table(blocks[name])
            _validate_tilt_series(p, ts, name)
            tilt[name] = ts
        elif require_tilt_series:
            raise InputError(p, f"no tilt-series table for tomogram {name!r}", row=i + 1, field="rlnTomoName")
    return TomogramSet(global_table=table, tilt_series=tilt, path=p, project_dir=proj, embedded=embedded)


def write_tomograms(
    path: str | os.PathLike,
    tset: TomogramSet,
    *,
    embed: bool | None = None,
    tilt_series_dir: str | os.PathLike | None = None,
    project_dir: str | os.PathLike | None = None,
) -> None:
    """Write a tomogram set: ``tomograms.star`` and (RELION 5) one tilt-series STAR per tomogram.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``tomograms.star``.
    tset : TomogramSet
        Not modified.
    embed : bool, optional
        Write the tilt-series tables as ``data_<name>`` blocks of ``tomograms.star`` (older
        layout, no ``rlnTomoTiltSeriesStarFile`` column). Default: as ``tset.embedded``.
    tilt_series_dir : str or os.PathLike, optional
        Directory of the per-tomogram files ``<name>.star`` (default: ``tilt_series/`` next to
        ``path``).
    project_dir : str or os.PathLike, optional
        Directory the written ``rlnTomoTiltSeriesStarFile`` names are relative to (default
        ``tset.project_dir``, else the directory of ``path``).
    """
    p = Path(path)
    table = tset.global_table.copy()
    _validate_global(p, table)
    names = table["rlnTomoName"].astype(str).tolist()
    for name, ts in tset.tilt_series.items():
        if name not in names:
            raise InputError(p, f"tilt series {name!r} has no row in data_global", field="rlnTomoName")
        _validate_tilt_series(p, ts, name)
    if embed is None:
        embed = tset.embedded
    blocks: dict[str, StarBlock] = {}
    if embed:
        if _FILE_LABEL in table.columns:
            table = table.drop(columns=[_FILE_LABEL])
        blocks["global"] = table
        for name in names:
            if name in tset.tilt_series:
                if name == "global":
                    raise InputError(p, "a tomogram named 'global' cannot be embedded", field="rlnTomoName")
                blocks[name] = tset.tilt_series[name]
        write_star(p, blocks)
        return

    missing = [n for n in names if n not in tset.tilt_series]
    if missing:
        raise InputError(p, f"no tilt-series table to write for tomogram {missing[0]!r}", field=_FILE_LABEL)
    proj = Path(project_dir) if project_dir is not None else (tset.project_dir or p.absolute().parent)
    proj = Path(proj).absolute()
    ts_dir = Path(tilt_series_dir) if tilt_series_dir is not None else p.parent / "tilt_series"
    ts_dir = ts_dir.absolute()
    entries = []
    for name in names:
        ts_path = ts_dir / f"{name}.star"
        write_star(ts_path, {name: tset.tilt_series[name]})
        try:
            entries.append(os.path.relpath(ts_path, proj))
        except ValueError:  # different drive (Windows)
            entries.append(str(ts_path))
    table[_FILE_LABEL] = entries
    if list(table.columns).index(_FILE_LABEL) != 1:  # RELION puts it right after the name
        cols = [c for c in table.columns if c != _FILE_LABEL]
        cols.insert(1, _FILE_LABEL)
        table = table[cols]
    write_star(p, {"global": table})
