"""MRC maps, images and stacks (through ``mrcfile``).

Arrays are indexed as in the file and in numpy: ``[z, y, x]`` for volumes, ``[y, x]`` for
single images, ``[n, y, x]`` for image stacks. Pixel sizes are in Å per pixel (voxel).
Data are returned as float32 whatever the file mode (0, 1, 2, 6 or 12 = float16).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from .errors import InputError

__all__ = ["MapHeader", "read_header", "read_map", "write_map"]

_HEADER_BYTES = 1024
_MODE_ITEMSIZE = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}
_REAL_MODES = {0, 1, 2, 6, 12}


@dataclass(frozen=True)
class MapHeader:
    """Geometry of an MRC file, read without its data.

    Attributes
    ----------
    shape : tuple of int
        Array shape as :func:`read_map` returns it: ``(nz, ny, nx)``, or ``(ny, nx)`` when
        ``nz == 1``.
    voxel_size_A : tuple of float
        Voxel size ``(x, y, z)`` in Å (0 when the header leaves it unset).
    mode : int
        MRC data mode (2 = float32, 12 = float16, ...).
    is_stack : bool
        True for an image stack (space group 0 with several sections), e.g. ``.mrcs`` files.
    """

    shape: tuple[int, ...]
    voxel_size_A: tuple[float, float, float]
    mode: int
    is_stack: bool

    @property
    def pixel_size_A(self) -> float:
        """Pixel size along x in Å (0 when unset)."""
        return float(self.voxel_size_A[0])

    @property
    def is_cube(self) -> bool:
        """True for a 3D ``N x N x N`` array."""
        return len(self.shape) == 3 and len(set(self.shape)) == 1


def _check_exists(p: Path) -> None:
    if not p.exists():
        raise InputError(p, "file not found")
    if not p.is_file():
        raise InputError(p, "not a regular file")


def read_header(path: str | os.PathLike) -> MapHeader:
    """Read the geometry of an MRC file without loading its data.

    Parameters
    ----------
    path : str or os.PathLike
        MRC file (``.mrc``, ``.mrcs``, ``.map``).

    Returns
    -------
    MapHeader

    Raises
    ------
    InputError
        If the file is missing, not an MRC file, has an unsupported mode, or is shorter
        (truncated) or longer than its header says.
    """
    p = Path(path)
    _check_exists(p)
    try:
        with mrcfile.open(p, mode="r", header_only=True, permissive=False) as mrc:
            h = mrc.header
            nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
            mode = int(h.mode)
            nsymbt = int(h.nsymbt)
            vs = mrc.voxel_size
            voxel = (float(vs.x), float(vs.y), float(vs.z))
            ispg = int(h.ispg)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(p, f"not a valid MRC file: {exc}") from exc
    if mode not in _MODE_ITEMSIZE:
        raise InputError(p, f"unsupported MRC mode {mode}")
    if min(nx, ny, nz) < 1 or nsymbt < 0:
        raise InputError(p, f"invalid MRC dimensions nx={nx}, ny={ny}, nz={nz}")
    expected = _HEADER_BYTES + nsymbt + nx * ny * nz * _MODE_ITEMSIZE[mode]
    size = p.stat().st_size
    if size < expected:
        raise InputError(p, f"truncated MRC file: {size} bytes, header needs {expected}")
    if size > expected:  # as mrcfile's validator: the header's sizes do not describe this file
        raise InputError(p, f"MRC file has {size} bytes, its header describes {expected} "
                         f"(nx={nx}, ny={ny}, nz={nz}, mode {mode}, {nsymbt} extended-header bytes)")
    shape = (ny, nx) if nz == 1 else (nz, ny, nx)
    is_stack = nz > 1 and ispg == 0
    return MapHeader(shape=shape, voxel_size_A=voxel, mode=mode, is_stack=is_stack)


def read_map(path: str | os.PathLike, *, require_cube: bool = False) -> tuple[np.ndarray, float]:
    """Read an MRC map, image or stack.

    Parameters
    ----------
    path : str or os.PathLike
        MRC file.
    require_cube : bool, default False
        Demand an ``N x N x N`` volume.

    Returns
    -------
    data : numpy.ndarray
        float32 array ``[z, y, x]`` (or ``[y, x]`` for a single image), C-contiguous, writable.
    pixel_size_A : float
        Pixel size along x in Å (0 when the header leaves it unset).

    Raises
    ------
    InputError
        If the file is missing, truncated or corrupt, holds complex data, or is not a cube when
        ``require_cube`` is set.
    """
    p = Path(path)
    header = read_header(p)  # validates size before mrcfile reads the data
    if header.mode not in _REAL_MODES:
        raise InputError(p, f"MRC mode {header.mode} (complex or unsupported) is not a real-valued map")
    if require_cube and not header.is_cube:
        raise InputError(p, f"a cubic N x N x N map is required, the file holds shape {header.shape} [z, y, x]")
    try:
        with mrcfile.open(p, mode="r", permissive=False) as mrc:
            data = np.array(mrc.data, dtype=np.float32, order="C", copy=True)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(p, f"cannot read MRC data: {exc}") from exc
    if not np.all(np.isfinite(data)):
        raise InputError(p, "map contains NaN or infinite values")
    return data, header.pixel_size_A


def write_map(
    path: str | os.PathLike,
    data: np.ndarray,
    pixel_size_A: float,
    *,
    float16: bool = False,
    image_stack: bool = False,
) -> None:
    """Write a real array to an MRC file (mode 2 float32, or mode 12 float16).

    Parameters
    ----------
    path : str or os.PathLike
        Output file; written to a temporary name in the same directory and then renamed.
    data : numpy.ndarray
        2D ``[y, x]`` or 3D ``[z, y, x]`` real, finite array (numpy; convert cupy arrays first).
    pixel_size_A : float
        Voxel size in Å written to the header (cell = shape x pixel size).
    float16 : bool, default False
        Write mode 12 (half precision) as RELION does with ``--float16``.
    image_stack : bool, default False
        Mark a 3D array as a stack of 2D images (space group 0, ``.mrcs``) instead of a volume.
    """
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise ValueError(f"write_map needs a 2D or 3D array, got shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise ValueError("write_map writes real data only")
    if not np.all(np.isfinite(arr)):
        raise ValueError("write_map: the array contains NaN or infinite values")
    if not np.isfinite(pixel_size_A) or pixel_size_A < 0:
        raise ValueError(f"invalid pixel size {pixel_size_A!r}")
    arr = np.ascontiguousarray(arr, dtype=np.float16 if float16 else np.float32)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with mrcfile.new(tmp, overwrite=False) as mrc:
            mrc.set_data(arr)
            if arr.ndim == 3:
                if image_stack:
                    mrc.set_image_stack()
                else:
                    mrc.set_volume()
            mrc.voxel_size = float(pixel_size_A)
            mrc.update_header_stats()
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
