"""The state behind the map/mask offset viewers (napari and notebook), with no GUI imports.

An :class:`OffsetSession` holds a refined map, the mask it should sit in, the particle STAR
file that produced the map, and the current offset ``(x, y, z)`` in pixels of the map. The
viewers move the map by ``-offset`` against the mask: when the offset equals where the density
really sits, the moved map is centred in the mask. :meth:`OffsetSession.estimate` finds that
offset (:func:`subtomo_nb.fourier.registration.estimate_offset`); :meth:`OffsetSession.apply`
re-centres the particles on it exactly as ``subtomo star-handler --center --center_X x
--center_Y y --center_Z z`` (:func:`subtomo_nb.tasks.recentre.recentre_star`), optionally writes
the re-centred map, and records the offset used in a JSON file beside the STAR file.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from subtomo_nb.fourier.fft import irfft3, rfft3, shift_half
from subtomo_nb.fourier.registration import estimate_offset
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_map, write_map
from subtomo_nb.io.star import read_star
from subtomo_nb.tasks.recentre import optics_pixel_sizes, recentre_star

__all__ = ["OffsetSession", "ApplyResult", "find_job_files", "shift_volume"]

#: Offset control step (pixels), as in the tutorial's by-eye estimate.
STEP_PX = 0.25

#: Default low-pass of the Estimate, in pixels of the map (4 = half Nyquist).
LOWPASS_PIXELS = 4.0


def shift_volume(volume: np.ndarray, shift_xyz_px: tuple[float, float, float]) -> np.ndarray:
    """Move a volume's content by ``+shift`` pixels ``(x, y, z)`` (band-limited Fourier shift).

    Parameters
    ----------
    volume
        Cubic volume ``[z, y, x]``.
    shift_xyz_px
        Shift in pixels, ordered (x, y, z).

    Returns
    -------
    numpy.ndarray
        float32 shifted volume (periodic boundary).
    """
    vol = np.asarray(volume, dtype=np.float64)
    if not vol.ndim == 3 or not vol.shape[0] == vol.shape[1] == vol.shape[2]:
        raise ValueError(f"expected a cubic volume, got shape {vol.shape}")
    out = irfft3(shift_half(rfft3(vol), np.asarray(shift_xyz_px, dtype=np.float64)), vol.shape[0])
    return out.astype(np.float32)


def _mask_from_note(job: Path, project: Path) -> Path | None:
    """The ``--solvent_mask`` of a RELION job's ``note.txt``/``job.star``, resolved in the project."""
    note = job / "note.txt"
    if note.is_file():
        m = re.search(r"--solvent_mask\s+(\S+)", note.read_text(errors="replace"))
        if m:
            return project / m.group(1)
    js = job / "job.star"
    if js.is_file():
        try:
            blocks = read_star(js)
        except (InputError, ValueError, OSError):
            blocks = {}
        table = blocks.get("joboptions_values")
        if table is not None and hasattr(table, "columns") and "rlnJobOptionVariable" in table.columns:
            rows = dict(zip(table["rlnJobOptionVariable"], table["rlnJobOptionValue"]))
            value = str(rows.get("fn_mask", "")).strip()
            if value and value != '""':
                return project / value
    return None


def find_job_files(job_dir: str | PathLike) -> dict[str, Path]:
    """Locate the refined map, its mask and its particles in a refine job directory.

    Map: the last ``*_class001.mrc`` (``run_class001.mrc`` of Refine3D), else the last
    ``*merged.mrc``. Particles: the matching ``*_data.star``. Mask: ``--solvent_mask`` of the
    job's ``note.txt`` or ``fn_mask`` of ``job.star``, else ``masks/mask_align_bin4.mrc`` or the
    only ``.mrc`` in the project's ``masks/`` (the project is two levels above the job).

    Raises
    ------
    InputError
        If a map, a mask or the particles cannot be found.
    """
    job = Path(job_dir)
    if not job.is_dir():
        raise InputError(what="job directory not found", path=str(job))
    project = job.parent.parent
    maps = sorted(job.glob("*_class001.mrc"), key=lambda p: p.stat().st_mtime) or sorted(
        job.glob("*merged.mrc"), key=lambda p: p.stat().st_mtime)
    maps = [m for m in maps if "_half" not in m.name]
    if not maps:
        raise InputError(what="no refined map (*_class001.mrc or *merged.mrc) in the job", path=str(job))
    map_path = maps[-1]
    stem = map_path.name.removesuffix("_class001.mrc").removesuffix(".mrc")
    candidates = [job / f"{stem}_data.star", job / "run_data.star", *sorted(job.glob("*_data.star"))]
    particles = next((c for c in candidates if c.is_file()), None)
    if particles is None:
        raise InputError(what="no particle file (*_data.star) in the job", path=str(job))
    mask = _mask_from_note(job, project)
    if mask is None or not mask.is_file():
        default = project / "masks" / "mask_align_bin4.mrc"
        found = sorted((project / "masks").glob("*.mrc")) if (project / "masks").is_dir() else []
        mask = default if default.is_file() else (found[0] if len(found) == 1 else None)
    if mask is None:
        raise InputError(what="no mask found (note.txt --solvent_mask, job.star fn_mask or masks/*.mrc)",
                         path=str(job))
    return {"map": map_path, "mask": mask, "particles": particles}


@dataclass
class ApplyResult:
    """What :meth:`OffsetSession.apply` wrote.

    Attributes
    ----------
    star_path : Path -- the re-centred particle STAR file.
    map_path : Path or None -- the re-centred map, when asked for.
    record_path : Path -- JSON record of the offset and the equivalent command line.
    offset_px : tuple of float -- the offset used, ``(x, y, z)`` pixels of the map.
    """

    star_path: Path
    map_path: Path | None
    record_path: Path
    offset_px: tuple[float, float, float]


@dataclass
class OffsetSession:
    """A map, a mask, particles and the current offset between map and mask.

    Attributes
    ----------
    map : numpy.ndarray
        Refined map ``[z, y, x]``.
    mask : numpy.ndarray
        Mask ``[z, y, x]`` of the same shape, made for a centred map.
    pixel_size_A : float
        Pixel size of the map (Å).
    particles_path : Path or None
        Particle STAR file to re-centre (needed by :meth:`apply`).
    map_path, mask_path : Path or None
        Where the volumes came from (recorded by :meth:`apply`).
    offset : list of float
        Current offset ``[x, y, z]`` in pixels: where the density sits relative to the mask.
    """

    map: np.ndarray
    mask: np.ndarray
    pixel_size_A: float = 1.0
    particles_path: Path | None = None
    map_path: Path | None = None
    mask_path: Path | None = None
    offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def __post_init__(self) -> None:
        self.map = np.asarray(self.map, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=np.float32)
        if self.map.ndim != 3 or self.map.shape != self.mask.shape:
            raise ValueError(f"map and mask must be 3D volumes of one shape; got {self.map.shape}, {self.mask.shape}")
        if self.particles_path is not None:
            self.particles_path = Path(self.particles_path)
        self.offset = [float(v) for v in self.offset]

    @classmethod
    def from_paths(cls, map_path: str | PathLike, mask_path: str | PathLike,
                   particles: str | PathLike | None = None) -> OffsetSession:
        """Read a map and a mask (MRC) and remember the particle file to re-centre."""
        vol, pix = read_map(map_path)
        msk, mpix = read_map(mask_path)
        if vol.shape != msk.shape:
            raise InputError(what=f"mask shape {msk.shape} differs from the map's {vol.shape}", path=str(mask_path))
        if abs(mpix - pix) > 1e-3 * pix:
            raise InputError(what=f"mask pixel size {mpix:g} Å differs from the map's {pix:g} Å", path=str(mask_path))
        return cls(vol, msk, float(pix), Path(particles) if particles else None, Path(map_path), Path(mask_path))

    @classmethod
    def from_job(cls, job_dir: str | PathLike) -> OffsetSession:
        """Open the refined map, its mask and particles of a refine job (see :func:`find_job_files`)."""
        f = find_job_files(job_dir)
        return cls.from_paths(f["map"], f["mask"], f["particles"])

    # -- offset ----------------------------------------------------------------------------
    def set_offset(self, x: float, y: float, z: float) -> None:
        """Set the offset ``(x, y, z)`` in pixels of the map."""
        self.offset = [float(x), float(y), float(z)]

    def moved_map(self) -> np.ndarray:
        """The map moved by ``-offset``: centred in the mask when the offset is right."""
        return shift_volume(self.map, tuple(-v for v in self.offset))  # type: ignore[arg-type]

    def estimate(self, *, max_shift_px: float | None = None, lowpass_A: float | None = -1.0) -> tuple[float, float, float]:
        """Estimate the offset automatically, set it and return it ``(x, y, z)`` (pixels).

        Parameters
        ----------
        max_shift_px
            Largest offset searched (pixels); default a quarter of the box.
        lowpass_A
            Low-pass (Å) of the map before correlating; default (-1) half Nyquist
            (``LOWPASS_PIXELS`` x the pixel size), which keeps the noise of a refinement at
            the resolution of a binned map out of the estimate; None for no filter.
        """
        if lowpass_A is not None and lowpass_A < 0:
            lowpass_A = LOWPASS_PIXELS * self.pixel_size_A
        est = estimate_offset(self.map, self.mask, max_shift_px=max_shift_px, lowpass_A=lowpass_A,
                              pixel_size_A=self.pixel_size_A)
        self.set_offset(*est)
        return est

    # -- apply -----------------------------------------------------------------------------
    def default_output(self) -> Path:
        """``<particles stem>_recentred.star`` beside the particle file."""
        if self.particles_path is None:
            raise InputError(what="no particle file to re-centre; give particles=...", path="")
        p = self.particles_path
        return p.with_name(p.stem + "_recentred.star")

    def apply(self, out_star: str | PathLike | None = None, *, write_map_too: bool = True,
              out_map: str | PathLike | None = None) -> ApplyResult:
        """Write the re-centred particles (and map) for the current offset, and record it.

        The particles are re-centred on the point ``offset`` of the map, exactly as
        ``subtomo star-handler --i IN --o OUT --center --center_X x --center_Y y --center_Z z``
        (the optics-group pixel size is used; if it differs from the map's, the offset is
        converted with ``--ignore_optics --angpix <map pixel>`` so the move in Å is right).

        Parameters
        ----------
        out_star
            Output STAR file; default ``<particles>_recentred.star``.
        write_map_too
            Also write the map moved by ``-offset`` (``<map>_recentred.mrc`` or ``out_map``).
        out_map
            Output map path.

        Returns
        -------
        ApplyResult
        """
        if self.particles_path is None:
            raise InputError(what="no particle file to re-centre; give particles=...", path="")
        out = Path(out_star) if out_star is not None else self.default_output()
        centre = (float(self.offset[0]), float(self.offset[1]), float(self.offset[2]))
        blocks = read_star(self.particles_path)
        pix = optics_pixel_sizes(blocks["optics"], self.particles_path) if "optics" in blocks else {}
        same = bool(pix) and all(abs(p - self.pixel_size_A) <= 1e-3 * self.pixel_size_A for p in pix.values())
        args = ["subtomo", "star-handler", "--i", str(self.particles_path), "--o", str(out), "--center",
                "--center_X", f"{centre[0]:.4f}", "--center_Y", f"{centre[1]:.4f}", "--center_Z", f"{centre[2]:.4f}"]
        if same:
            recentre_star(self.particles_path, out, centre)
        else:
            recentre_star(self.particles_path, out, centre, ignore_optics=True, angpix=self.pixel_size_A)
            args += ["--ignore_optics", "--angpix", f"{self.pixel_size_A:g}"]
        map_out: Path | None = None
        if write_map_too:
            if out_map is not None:
                map_out = Path(out_map)
            elif self.map_path is not None:
                map_out = self.map_path.with_name(self.map_path.stem + "_recentred.mrc")
            else:
                map_out = out.with_name(out.stem + "_map.mrc")
            write_map(map_out, self.moved_map(), self.pixel_size_A)
        record = out.with_name(out.stem + "_offset.json")
        record.write_text(json.dumps({
            "offset_px": {"x": centre[0], "y": centre[1], "z": centre[2]},
            "offset_A": {k: v * self.pixel_size_A for k, v in zip("xyz", centre)},
            "pixel_size_A": self.pixel_size_A,
            "map": str(self.map_path) if self.map_path else None,
            "mask": str(self.mask_path) if self.mask_path else None,
            "particles_in": str(self.particles_path),
            "particles_out": str(out),
            "map_out": str(map_out) if map_out else None,
            "command": shlex.join(args),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }, indent=2) + "\n")
        return ApplyResult(out, map_out, record, centre)


def volume_slices(volume: np.ndarray, centre: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthogonal central slices ``(xy, xz, yz)`` of a ``[z, y, x]`` volume.

    Returns the ``[y, x]`` slice at z = N//2, the ``[z, x]`` slice at y = N//2 and the ``[z, y]``
    slice at x = N//2 (or at ``centre`` = (x, y, z) voxel indices when given).
    """
    nz, ny, nx = volume.shape
    cx, cy, cz = centre if centre is not None else (nx // 2, ny // 2, nz // 2)
    return volume[cz], volume[:, cy, :], volume[:, :, cx]
