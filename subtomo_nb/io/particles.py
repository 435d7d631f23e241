"""RELION 5 tomography particle sets (``particles.star``, ``run_data.star``).

A particle set has up to three blocks (RELION's ``ParticleSet``): ``data_general`` (list;
``rlnTomoSubTomosAre2DStacks`` 0/1, absent = 3D pseudo-subtomograms), ``data_optics`` (one row
per optics group) and ``data_particles`` (one row per particle). Two data layouts exist:

* 3D pseudo-subtomograms (RELION 4 style): ``rlnImageName`` is a real-space ``_data.mrc`` volume
  and ``rlnCtfImage`` its ``_weights.mrc`` (see :mod:`subtomo_nb.io.subtomo`).
* 2D stacks (RELION 5 default): ``rlnImageName`` is a ``_stack2d.mrcs`` of the visible tilt
  images, ``rlnTomoVisibleFrames`` (``[1,1,0,...]``) says which tilts they are.

File names are relative to the RELION project directory (where RELION ran), not to the STAR
file; :func:`read_particles` finds that directory (see :func:`resolve_path`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from ._paths import find_project_dir, resolve_relative, split_image_name
from .errors import InputError
from .star import StarBlock, read_star, write_star

__all__ = [
    "ParticleSet",
    "read_particles",
    "write_particles",
    "validate_particles",
    "pixel_size",
    "box_size",
    "subtomogram_binning",
    "is_2d_stack",
    "optics_row",
    "resolve_path",
    "check_files",
    "parse_visible_frames",
    "visible_frames",
    "ANGLE_LABELS",
    "ORIGIN_LABELS",
    "PIXEL_SIZE_LABELS",
]

#: Euler angles of a particle (degrees).
ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
#: Origin offsets (Å) in the particle (subtomogram) frame.
ORIGIN_LABELS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
#: Euler angles of the subtomogram frame (degrees), RELION 5.
SUBTOMO_ANGLE_LABELS = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
#: Particle position (Å) relative to the tomogram centre, RELION 5.
CENTERED_COORD_LABELS = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
#: Pixel-size labels of an optics group, in the order RELION's ObservationModel tries them.
PIXEL_SIZE_LABELS = (
    "rlnImagePixelSize",
    "rlnMicrographPixelSize",
    "rlnMicrographOriginalPixelSize",
    "rlnTomoTiltSeriesPixelSize",
)
_OPTICS_REQUIRED = ("rlnOpticsGroup", "rlnImageSize", "rlnImageDimensionality")
_NUMERIC_PARTICLE_LABELS = (
    ANGLE_LABELS
    + ORIGIN_LABELS
    + SUBTOMO_ANGLE_LABELS
    + CENTERED_COORD_LABELS
    + ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")
)


@dataclass
class ParticleSet:
    """A RELION particle set.

    Attributes
    ----------
    general : dict or None
        ``data_general`` (e.g. ``{"rlnTomoSubTomosAre2DStacks": 1}``), None when absent.
    optics : pandas.DataFrame
        ``data_optics``, one row per optics group.
    particles : pandas.DataFrame
        ``data_particles``, one row per particle (row i is data row i + 1 of the file).
    path : pathlib.Path or None
        The STAR file it was read from.
    project_dir : pathlib.Path or None
        Directory that relative file names are resolved against (see :func:`resolve_path`).
    extra_blocks : dict
        Any other blocks of the file, kept so that writing does not lose them.
    """

    general: dict | None
    optics: pd.DataFrame
    particles: pd.DataFrame
    path: Path | None = None
    project_dir: Path | None = None
    extra_blocks: dict[str, StarBlock] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.particles)

    def copy(self) -> "ParticleSet":
        """Deep copy of the tables (paths shared)."""
        return ParticleSet(
            general=None if self.general is None else dict(self.general),
            optics=self.optics.copy(),
            particles=self.particles.copy(),
            path=self.path,
            project_dir=self.project_dir,
            extra_blocks={k: (v.copy() if isinstance(v, pd.DataFrame) else dict(v)) for k, v in self.extra_blocks.items()},
        )


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _as_table(path: Path | None, block: StarBlock, name: str) -> pd.DataFrame:
    if isinstance(block, pd.DataFrame):
        return block.reset_index(drop=True)
    if isinstance(block, dict):  # a list-style block is a one-row table for RELION
        return pd.DataFrame({k: [v] for k, v in block.items()})
    raise InputError(path, f"block data_{name} is not a table")


def _as_general(path: Path | None, block: StarBlock | None) -> dict | None:
    if block is None:
        return None
    if isinstance(block, dict):
        return dict(block)
    if isinstance(block, pd.DataFrame):  # relion_refine writes data_general as a one-row loop
        if len(block) != 1:
            raise InputError(path, f"data_general must hold one row, found {len(block)}")
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in block.iloc[0].items()}
    raise InputError(path, "data_general is not a list block")


def _numeric(path: Path | None, table: pd.DataFrame, label: str, block: str, *, integer: bool = False) -> np.ndarray:
    """Column as float64; InputError (1-based row, field) at the first NaN or non-number."""
    raw = table[label]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if integer:
        bad |= np.isfinite(values) & (values != np.round(values))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "an integer" if integer else "a finite number"
        raise InputError(path, f"{raw.iloc[i]!r} in data_{block} is not {kind}", row=i + 1, field=label)
    return values


def _strings(path: Path | None, table: pd.DataFrame, label: str, block: str) -> None:
    raw = table[label]
    bad = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(path, f"empty file name in data_{block}", row=i + 1, field=label)


def parse_visible_frames(value: object) -> np.ndarray:
    """Parse an ``rlnTomoVisibleFrames`` value such as ``"[1,1,0,1]"``.

    Parameters
    ----------
    value : str or sequence of int
        RELION integer vector (0/1 per tilt of the tilt series, in tilt-series order).

    Returns
    -------
    numpy.ndarray
        bool array, one entry per tilt image of the tilt series.

    Raises
    ------
    ValueError
        If the value is not a bracketed list of 0/1.
    """
    if isinstance(value, str):
        s = value.strip()
        if not (s.startswith("[") and s.endswith("]")):
            raise ValueError(f"not a RELION vector: {value!r}")
        body = s[1:-1].strip()
        items = [t for t in body.replace(" ", "").split(",")] if body else []
        try:
            ints = np.array([int(t) for t in items], dtype=np.int64)
        except ValueError as exc:
            raise ValueError(f"not an integer vector: {value!r}") from exc
    else:
        ints = np.asarray(value, dtype=np.int64).ravel()
    if ints.size == 0 or not np.all((ints == 0) | (ints == 1)):
        raise ValueError(f"visible frames must be a non-empty list of 0/1, got {value!r}")
    return ints.astype(bool)


def validate_particles(pset: ParticleSet, path: str | os.PathLike | None = None, *, require_tomo: bool = True) -> None:
    """Check a particle set as RELION would need it.

    Parameters
    ----------
    pset : ParticleSet
    path : str or os.PathLike, optional
        File named in errors (default ``pset.path``).
    require_tomo : bool, default True
        Require ``rlnTomoName`` (tomography particles).

    Raises
    ------
    InputError
        Naming the file, the 1-based row (of ``data_particles`` or, when the text says so,
        ``data_optics``) and the field, for: a missing required column; NaN or non-numeric
        angles, origins, coordinates, optics values; an ``rlnOpticsGroup`` of a particle that
        the optics table lacks; duplicate optics groups; empty file names; bad
        ``rlnTomoVisibleFrames`` of 2D stacks.
    """
    p = Path(path) if path is not None else pset.path
    optics, parts = pset.optics, pset.particles

    for label in _OPTICS_REQUIRED:
        if label not in optics.columns:
            raise InputError(p, "required column missing from data_optics", field=label)
    if not any(label in optics.columns for label in PIXEL_SIZE_LABELS):
        raise InputError(p, "data_optics has no pixel size (" + ", ".join(PIXEL_SIZE_LABELS) + ")", field=PIXEL_SIZE_LABELS[0])
    if len(optics) == 0:
        raise InputError(p, "data_optics has no optics group")
    groups = _numeric(p, optics, "rlnOpticsGroup", "optics", integer=True)
    if len(set(groups.tolist())) != len(groups):
        dup = next(i for i, g in enumerate(groups) if g in groups[:i])
        raise InputError(p, f"optics group {int(groups[dup])} defined twice in data_optics", row=dup + 1, field="rlnOpticsGroup")
    sizes = _numeric(p, optics, "rlnImageSize", "optics", integer=True)
    if np.any(sizes < 1):
        i = int(np.flatnonzero(sizes < 1)[0])
        raise InputError(p, f"image size {sizes[i]:g} in data_optics is not positive", row=i + 1, field="rlnImageSize")
    dims = _numeric(p, optics, "rlnImageDimensionality", "optics", integer=True)
    if not np.all((dims == 2) | (dims == 3)):
        i = int(np.flatnonzero((dims != 2) & (dims != 3))[0])
        raise InputError(p, f"image dimensionality {dims[i]:g} in data_optics is not 2 or 3", row=i + 1, field="rlnImageDimensionality")
    if "rlnImagePixelSize" in optics.columns:  # given, it is the images' pixel size: no fall-back
        pix = _numeric(p, optics, "rlnImagePixelSize", "optics")
        if np.any(pix <= 0):
            i = int(np.flatnonzero(pix <= 0)[0])
            raise InputError(p, f"pixel size {pix[i]:g} in data_optics is not positive", row=i + 1, field="rlnImagePixelSize")
    for i in range(len(optics)):
        _optics_pixel_size(p, optics, i)

    required = ["rlnOpticsGroup", "rlnImageName"] + (["rlnTomoName"] if require_tomo else [])
    for label in required:
        if label not in parts.columns:
            raise InputError(p, "required column missing from data_particles", field=label)
    stack2d = is_2d_stack(pset)
    if any(label in parts.columns for label in ANGLE_LABELS):
        for label in ANGLE_LABELS:
            if label not in parts.columns:
                raise InputError(p, "column missing from data_particles (the other Euler angles are given)", field=label)
    if any(label in parts.columns for label in ORIGIN_LABELS):
        need_z = stack2d or bool(np.any(dims == 3))
        for label in ORIGIN_LABELS if need_z else ORIGIN_LABELS[:2]:
            if label not in parts.columns:
                raise InputError(p, "column missing from data_particles (the other origin offsets are given)", field=label)
    if any(label in parts.columns for label in SUBTOMO_ANGLE_LABELS):
        for label in SUBTOMO_ANGLE_LABELS:
            if label not in parts.columns:
                raise InputError(p, "column missing from data_particles (the other subtomogram angles are given)", field=label)

    if len(parts) == 0:
        return
    pgroups = _numeric(p, parts, "rlnOpticsGroup", "particles", integer=True)
    missing = ~np.isin(pgroups, groups)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise InputError(p, f"optics group {int(pgroups[i])} is not defined in data_optics", row=i + 1, field="rlnOpticsGroup")
    for label in _NUMERIC_PARTICLE_LABELS:
        if label in parts.columns:
            _numeric(p, parts, label, "particles")
    _strings(p, parts, "rlnImageName", "particles")
    if "rlnCtfImage" in parts.columns and not stack2d:
        _strings(p, parts, "rlnCtfImage", "particles")
    if require_tomo:
        _strings(p, parts, "rlnTomoName", "particles")

    if stack2d:
        if "rlnTomoVisibleFrames" not in parts.columns:
            raise InputError(p, "2D stacks (rlnTomoSubTomosAre2DStacks = 1) need rlnTomoVisibleFrames", field="rlnTomoVisibleFrames")
        for i, value in enumerate(parts["rlnTomoVisibleFrames"].tolist()):
            try:
                parse_visible_frames(value)
            except (ValueError, TypeError) as exc:
                raise InputError(p, str(exc), row=i + 1, field="rlnTomoVisibleFrames") from exc
        used = np.isin(groups, pgroups)
        if np.any(used & (dims != 2)):
            i = int(np.flatnonzero(used & (dims != 2))[0])
            raise InputError(
                p, "2D stacks (rlnTomoSubTomosAre2DStacks = 1) need rlnImageDimensionality 2 in data_optics",
                row=i + 1, field="rlnImageDimensionality",
            )


def _optics_pixel_size(path: Path | None, optics: pd.DataFrame, i: int) -> float:
    for label in PIXEL_SIZE_LABELS:
        if label in optics.columns:
            value = pd.to_numeric(pd.Series([optics[label].iloc[i]]), errors="coerce").iloc[0]
            if pd.notna(value) and np.isfinite(value) and value > 0:
                return float(value)
    present = next(label for label in PIXEL_SIZE_LABELS if label in optics.columns)
    raise InputError(path, "no positive pixel size in data_optics", row=i + 1, field=present)


# --------------------------------------------------------------------------------------------
# Reading / writing
# --------------------------------------------------------------------------------------------


def read_particles(
    path: str | os.PathLike,
    project_dir: str | os.PathLike | None = None,
    *,
    require_tomo: bool = True,
) -> ParticleSet:
    """Read and check a RELION particle STAR file.

    Parameters
    ----------
    path : str or os.PathLike
        The STAR file (``particles.star``, ``run_data.star``, ...). Only read.
    project_dir : str or os.PathLike, optional
        RELION project directory that relative file names refer to. By default the nearest
        directory, starting with the STAR file's own and going up, in which the first
        ``rlnImageName`` exists; else the current directory.
    require_tomo : bool, default True
        Require ``rlnTomoName`` (set False for single-particle style tables such as the
        input of ``relion_reconstruct``).

    Returns
    -------
    ParticleSet

    Raises
    ------
    InputError
        For the reasons listed in :func:`read_star` and :func:`validate_particles`, or when
        ``data_optics`` or ``data_particles`` is missing. Image files are not checked here
        (see :func:`check_files`).
    """
    p = Path(path)
    blocks = read_star(p)
    general = _as_general(p, blocks.pop("general", None))
    for name in ("optics", "particles"):
        if name not in blocks:
            raise InputError(p, f"no data_{name} block (a RELION 3.1+ particle file needs data_optics and data_particles)")
    optics = _as_table(p, blocks.pop("optics"), "optics")
    particles = _as_table(p, blocks.pop("particles"), "particles")
    pset = ParticleSet(general=general, optics=optics, particles=particles, path=p, extra_blocks=blocks)
    validate_particles(pset, p, require_tomo=require_tomo)
    if project_dir is not None:
        pset.project_dir = Path(project_dir).absolute()
    else:
        first = str(particles["rlnImageName"].iloc[0]) if len(particles) else None
        pset.project_dir = find_project_dir(p, first)
    return pset


def write_particles(path: str | os.PathLike, pset: ParticleSet, *, require_tomo: bool = True) -> None:
    """Write a particle set as a RELION STAR file (general, optics, particles, other blocks).

    File names in the tables are written unchanged (they stay relative to the project dir).

    Parameters
    ----------
    path : str or os.PathLike
        Output STAR file.
    pset : ParticleSet
        Checked with :func:`validate_particles` before writing.
    require_tomo : bool, default True
        As in :func:`read_particles`.
    """
    p = Path(path)
    validate_particles(pset, p, require_tomo=require_tomo)
    blocks: dict[str, StarBlock] = {}
    if pset.general is not None:
        blocks["general"] = dict(pset.general)
    blocks["optics"] = pset.optics
    blocks["particles"] = pset.particles
    for name, block in pset.extra_blocks.items():
        if name in blocks:
            raise ValueError(f"extra block name {name!r} clashes with a particle-set block")
        blocks[name] = block
    write_star(p, blocks)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def is_2d_stack(pset: ParticleSet) -> bool:
    """True when ``data_general`` says ``rlnTomoSubTomosAre2DStacks = 1`` (RELION 5 2D stacks)."""
    if not pset.general:
        return False
    value = pset.general.get("rlnTomoSubTomosAre2DStacks", 0)
    try:
        return int(float(value)) == 1
    except (TypeError, ValueError):
        return False


def _optics_position(pset: ParticleSet, optics_group: int | None) -> int:
    optics = pset.optics
    if optics_group is None:
        if len(optics) != 1:
            raise ValueError(f"{len(optics)} optics groups: give optics_group")
        return 0
    match = np.flatnonzero(pd.to_numeric(optics["rlnOpticsGroup"], errors="coerce").to_numpy() == int(optics_group))
    if match.size == 0:
        raise InputError(pset.path, f"optics group {optics_group} is not defined in data_optics", field="rlnOpticsGroup")
    return int(match[0])


def optics_row(pset: ParticleSet, optics_group: int | None = None) -> pd.Series:
    """The ``data_optics`` row of an optics group.

    Parameters
    ----------
    pset : ParticleSet
    optics_group : int, optional
        ``rlnOpticsGroup`` value; may be omitted when there is a single group.

    Returns
    -------
    pandas.Series
    """
    return pset.optics.iloc[_optics_position(pset, optics_group)]


def pixel_size(pset: ParticleSet, optics_group: int | None = None) -> float:
    """Pixel size (Å) of the particle images of an optics group.

    ``rlnImagePixelSize``, else ``rlnMicrographPixelSize``, else
    ``rlnMicrographOriginalPixelSize``, else ``rlnTomoTiltSeriesPixelSize`` (as RELION's
    ``ObservationModel::getPixelSize``).

    Parameters
    ----------
    pset : ParticleSet
    optics_group : int, optional
        ``rlnOpticsGroup``; without it, the pixel size every optics group shares (to 1e-4).

    Returns
    -------
    float
        Å per pixel.
    """
    if optics_group is None and len(pset.optics) > 1:
        return _common_to_all_groups(pset, pixel_size, "rlnImagePixelSize")
    return _optics_pixel_size(pset.path, pset.optics, _optics_position(pset, optics_group))


def subtomogram_binning(pset: ParticleSet, optics_group: int | None = None) -> float:
    """Binning of the extracted particles relative to the tilt series (``rlnTomoSubtomogramBinning``).

    Where the column is absent, ``rlnImagePixelSize / rlnTomoTiltSeriesPixelSize`` (both are
    written by relion_tomo_subtomo), else 1. Without ``optics_group``, the binning every optics
    group shares (a tomogram set extracted in one job: one optics group per tomogram).
    """
    if optics_group is None and len(pset.optics) > 1:
        return _common_to_all_groups(pset, subtomogram_binning, "rlnTomoSubtomogramBinning")
    row = optics_row(pset, optics_group)
    if "rlnTomoSubtomogramBinning" in row.index:
        b = float(row["rlnTomoSubtomogramBinning"])
    elif "rlnImagePixelSize" in row.index and "rlnTomoTiltSeriesPixelSize" in row.index:
        b = float(row["rlnImagePixelSize"]) / float(row["rlnTomoTiltSeriesPixelSize"])
    else:
        b = 1.0
    if not np.isfinite(b) or b <= 0:
        raise InputError(pset.path, f"binning {b} is not a positive number", field="rlnTomoSubtomogramBinning")
    return b


def box_size(pset: ParticleSet, optics_group: int | None = None) -> int:
    """Box size (pixels, ``rlnImageSize``) of the particle images of an optics group (without
    ``optics_group``: the box every optics group shares)."""
    if optics_group is None and len(pset.optics) > 1:
        return _common_to_all_groups(pset, box_size, "rlnImageSize")
    return int(optics_row(pset, optics_group)["rlnImageSize"])


def _common_to_all_groups(pset: ParticleSet, per_group: Callable[[ParticleSet, int], Any], label: str) -> Any:
    """``per_group`` of every optics group, which must agree to 1e-4 (relative).

    Else one line naming the file, the ``data_optics`` row of the first group that differs and
    ``label``, with every group's value. Binnings are often ratios of pixel sizes, hence the tolerance.
    """
    groups = pd.to_numeric(pset.optics["rlnOpticsGroup"], errors="coerce").to_numpy()
    values = {int(g): per_group(pset, int(g)) for g in groups}
    first = next(iter(values.values()))
    differs = [i for i, v in enumerate(values.values()) if abs(v - first) > 1e-4 * abs(first)]
    if differs:
        raise InputError(pset.path, "the optics groups differ (" + ", ".join(f"group {g}: {v:g}" for g, v in
                                                                            values.items()) + "); give one optics group",
                         row=differs[0] + 1, field=label)
    return first


def resolve_path(pset: ParticleSet, name: str) -> Path:
    """Absolute path of a file name from the STAR file (``"<n>@"`` stack prefix removed).

    Relative names are taken from ``pset.project_dir`` (RELION's working directory), or the
    current directory when that is None.
    """
    return resolve_relative(pset.project_dir, name)


def visible_frames(pset: ParticleSet, index: int) -> np.ndarray:
    """Visible-tilt mask (bool per tilt of the tilt series) of particle ``index`` (0-based)."""
    if "rlnTomoVisibleFrames" not in pset.particles.columns:
        raise InputError(pset.path, "no rlnTomoVisibleFrames column", field="rlnTomoVisibleFrames")
    value = pset.particles["rlnTomoVisibleFrames"].iloc[index]
    try:
        return parse_visible_frames(value)
    except (ValueError, TypeError) as exc:
        raise InputError(pset.path, str(exc), row=index + 1, field="rlnTomoVisibleFrames") from exc


def check_files(pset: ParticleSet, fields: Iterable[str] = ("rlnImageName", "rlnCtfImage")) -> None:
    """Check that every image file named in the particle table exists.

    Parameters
    ----------
    pset : ParticleSet
    fields : iterable of str
        Columns holding file names (those absent from the table are skipped).

    Raises
    ------
    InputError
        Naming the STAR file, the 1-based row and the field of the first missing file.
    """
    seen: dict[str, bool] = {}
    parts = pset.particles
    for label in fields:
        if label not in parts.columns:
            continue
        if label == "rlnCtfImage" and is_2d_stack(pset):
            continue
        for i, name in enumerate(parts[label].tolist()):
            _, rel = split_image_name(str(name))
            exists = seen.get(rel)
            if exists is None:
                exists = resolve_path(pset, rel).is_file()
                seen[rel] = exists
            if not exists:
                raise InputError(pset.path, f"file not found: {resolve_path(pset, rel)}", row=i + 1, field=label)
