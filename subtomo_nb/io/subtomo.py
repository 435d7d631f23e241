"""Pseudo-subtomograms (RELION 4 style 3D particles) and RELION 5 2D particle stacks.

A 3D pseudo-subtomogram of box N is two files:

* ``<name>_data.mrc`` (``rlnImageName``): the real-space N x N x N volume ``[z, y, x]`` (the
  inverse transform of the CTF-premultiplied sum of the inserted tilt slices).
* ``<name>_weights.mrc`` (``rlnCtfImage``): an MRC array of shape ``(2N, N, N//2+1)`` as
  ``[z, y, x]``; z-slices ``0..N-1`` hold the CTF² volume (sum of CTF²·dose-weight²) and
  ``N..2N-1`` the multiplicity, both in FFTW's half layout, which is numpy's ``rfftn`` layout of
  the centred box: ``[kz, ky, kx]``, frequency 0 at index 0, negative kz/ky wrapped, kx >= 0.
  RELION writes 1 / (binned pixel size) as its header pixel size.

Older layouts are read too: a half-size ``(N, N, N//2+1)`` CTF volume without multiplicity,
and a cubic ``N x N x N`` *centred* full CTF volume (converted to the half layout).

A RELION 5 2D stack ``<name>_stack2d.mrcs`` holds one ``N x N`` real-space image per visible
tilt (``rlnTomoVisibleFrames``), float32 or float16.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .mrc import read_header, read_map, write_map
from .particles import ParticleSet, box_size, is_2d_stack, pixel_size, resolve_path, visible_frames

__all__ = [
    "PseudoSubtomo",
    "read_pseudo_subtomo",
    "write_pseudo_subtomo",
    "read_particle_subtomo",
    "read_stack2d",
    "write_stack2d",
    "read_particle_stack2d",
    "PIXEL_TOLERANCE",
]

#: Relative tolerance between an MRC header pixel size and ``rlnImagePixelSize``.
PIXEL_TOLERANCE = 1e-3


@dataclass
class PseudoSubtomo:
    """One 3D pseudo-subtomogram.

    Attributes
    ----------
    data : numpy.ndarray
        float32 real-space volume ``[z, y, x]``, shape ``(N, N, N)``.
    ctf2 : numpy.ndarray
        float32 half-transform ``[kz, ky, kx]``, shape ``(N, N, N//2+1)``: sum of CTF²·dose²
        over the inserted tilts (numpy ``rfftn`` layout of the centred box).
    multiplicity : numpy.ndarray or None
        float32, same shape as ``ctf2``: the insertion multiplicity, or None when the file
        carries none (older layouts).
    """

    data: np.ndarray
    ctf2: np.ndarray
    multiplicity: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.data.shape[0] if self.data.ndim == 3 else -1
        if self.data.ndim != 3 or self.data.shape != (n, n, n):
            raise ValueError(f"data must be an N x N x N volume, got shape {self.data.shape}")
        half = (n, n, n // 2 + 1)
        if self.ctf2.shape != half:
            raise ValueError(f"ctf2 must have shape {half} for box {n}, got {self.ctf2.shape}")
        if self.multiplicity is not None and self.multiplicity.shape != half:
            raise ValueError(f"multiplicity must have shape {half} for box {n}, got {self.multiplicity.shape}")

    @property
    def box(self) -> int:
        """Box size N in pixels."""
        return int(self.data.shape[0])


def _check_pixel(path: Path, header_px: float, expected: float | None, label: str = "rlnImagePixelSize") -> None:
    """Header pixel 0 or 1 means "unset" and is accepted."""
    if expected is None or header_px == 0.0 or abs(header_px - 1.0) < 1e-6:
        return
    if abs(header_px - expected) > PIXEL_TOLERANCE * abs(expected):
        raise InputError(
            path,
            f"MRC header pixel size {header_px:g} A differs from {label} = {expected:g} A",
            field=label,
        )


def read_pseudo_subtomo(
    data_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    box: int | None = None,
    *,
    pixel_size_A: float | None = None,
) -> PseudoSubtomo:
    """Read a pseudo-subtomogram (``_data.mrc`` + ``_weights.mrc``).

    Parameters
    ----------
    data_path : str or os.PathLike
        Real-space volume (``rlnImageName``).
    weights_path : str or os.PathLike
        CTF² (+ multiplicity) file (``rlnCtfImage``), in any of the layouts of this module.
    box : int, optional
        Expected box size N (``rlnImageSize`` of the optics group).
    pixel_size_A : float, optional
        Expected pixel size in Å (``rlnImagePixelSize``), compared with the data header
        (relative tolerance :data:`PIXEL_TOLERANCE`; a header pixel of 0 or 1 is accepted).

    Returns
    -------
    PseudoSubtomo

    Raises
    ------
    InputError
        Missing/corrupt files; data not cubic (field ``rlnImageName``); data box differing from
        ``box`` (field ``rlnImageSize``); weights shape not fitting the data box (field
        ``rlnCtfImage``); header pixel size differing from ``pixel_size_A`` (field
        ``rlnImagePixelSize``).
    """
    dpath, wpath = Path(data_path), Path(weights_path)
    dh = read_header(dpath)
    if not dh.is_cube:
        raise InputError(dpath, f"pseudo-subtomogram data must be an N x N x N volume, found shape {dh.shape} [z, y, x]", field="rlnImageName")
    n = dh.shape[0]
    if box is not None and n != int(box):
        raise InputError(dpath, f"box size {n} of the data differs from rlnImageSize = {int(box)}", field="rlnImageSize")
    _check_pixel(dpath, dh.pixel_size_A, pixel_size_A)
    wh = read_header(wpath)
    half = (n, n, n // 2 + 1)
    if wh.shape == (2 * n, n, n // 2 + 1):
        layout = "relion"
    elif wh.shape == half:
        layout = "half"
    elif wh.shape == (n, n, n):
        layout = "full"
    else:
        raise InputError(
            wpath,
            f"weights shape {wh.shape} [z, y, x] does not fit box {n} of {dpath.name}: expected "
            f"{(2 * n, n, n // 2 + 1)} (CTF² + multiplicity), {half} or {(n, n, n)}",
            field="rlnCtfImage",
        )
    data, _ = read_map(dpath)
    weights, _ = read_map(wpath)
    if layout == "relion":
        ctf2 = np.ascontiguousarray(weights[:n])
        multiplicity = np.ascontiguousarray(weights[n:])
    elif layout == "half":
        ctf2, multiplicity = weights, None
    else:  # centred full N^3 CTF volume -> FFTW half layout
        ctf2 = np.ascontiguousarray(np.fft.ifftshift(np.abs(weights))[:, :, : n // 2 + 1])
        multiplicity = None
    return PseudoSubtomo(data=data, ctf2=ctf2.astype(np.float32, copy=False), multiplicity=multiplicity)


def write_pseudo_subtomo(
    data_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    ps: PseudoSubtomo,
    pixel_size_A: float,
    float16: bool = False,
) -> None:
    """Write a pseudo-subtomogram in RELION's layout.

    Parameters
    ----------
    data_path, weights_path : str or os.PathLike
        Output ``_data.mrc`` and ``_weights.mrc``.
    ps : PseudoSubtomo
        With a multiplicity the weights file is ``(2N, N, N//2+1)``; without, the older
        half-size ``(N, N, N//2+1)`` CTF-only layout.
    pixel_size_A : float
        Binned pixel size (Å) of the subtomogram (``rlnImagePixelSize``); the weights header
        gets its inverse, as RELION writes it.
    float16 : bool, default False
        Write both files in MRC mode 12.
    """
    if not pixel_size_A > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_A!r}")
    write_map(data_path, ps.data, pixel_size_A, float16=float16)
    if ps.multiplicity is None:
        weights = ps.ctf2
    else:
        weights = np.concatenate([np.asarray(ps.ctf2, dtype=np.float32), np.asarray(ps.multiplicity, dtype=np.float32)], axis=0)
    write_map(weights_path, weights, 1.0 / pixel_size_A, float16=float16)


def read_particle_subtomo(pset: ParticleSet, index: int) -> PseudoSubtomo:
    """Read the pseudo-subtomogram of particle ``index`` (0-based row of ``pset.particles``).

    The box and pixel size of its optics group are checked against the files.
    """
    if is_2d_stack(pset):
        raise InputError(pset.path, "particles are 2D stacks, not 3D pseudo-subtomograms", field="rlnImageName")
    row = pset.particles.iloc[index]
    if "rlnCtfImage" not in pset.particles.columns:
        raise InputError(pset.path, "no rlnCtfImage column: 3D pseudo-subtomograms need their weights file", field="rlnCtfImage")
    group = int(row["rlnOpticsGroup"])
    return read_pseudo_subtomo(
        resolve_path(pset, str(row["rlnImageName"])),
        resolve_path(pset, str(row["rlnCtfImage"])),
        box=box_size(pset, group),
        pixel_size_A=pixel_size(pset, group),
    )


def read_stack2d(
    path: str | os.PathLike,
    *,
    box: int | None = None,
    n_frames: int | None = None,
    pixel_size_A: float | None = None,
) -> tuple[np.ndarray, float]:
    """Read a RELION 5 ``_stack2d.mrcs`` (float32 or float16).

    Parameters
    ----------
    path : str or os.PathLike
        The stack.
    box : int, optional
        Expected image size N (``rlnImageSize``).
    n_frames : int, optional
        Expected number of images (the number of 1s in ``rlnTomoVisibleFrames``).
    pixel_size_A : float, optional
        Expected pixel size (Å, ``rlnImagePixelSize``).

    Returns
    -------
    stack : numpy.ndarray
        float32 ``(n, N, N)`` images ``[n, y, x]``.
    pixel_size_A : float
        Header pixel size (Å).

    Raises
    ------
    InputError
        Missing/corrupt file, non-square images (``rlnImageName``), wrong size
        (``rlnImageSize``), wrong number of images (``rlnTomoVisibleFrames``), pixel size
        mismatch (``rlnImagePixelSize``).
    """
    p = Path(path)
    h = read_header(p)
    shape = (1, *h.shape) if len(h.shape) == 2 else h.shape
    if shape[1] != shape[2]:
        raise InputError(p, f"2D stack images must be square, found {shape[1]} x {shape[2]}", field="rlnImageName")
    if box is not None and shape[1] != int(box):
        raise InputError(p, f"image size {shape[1]} differs from rlnImageSize = {int(box)}", field="rlnImageSize")
    if n_frames is not None and shape[0] != int(n_frames):
        raise InputError(p, f"{shape[0]} images in the stack but {int(n_frames)} visible frames", field="rlnTomoVisibleFrames")
    _check_pixel(p, h.pixel_size_A, pixel_size_A)
    data, px = read_map(p)
    return data.reshape(shape), px


def write_stack2d(path: str | os.PathLike, stack: np.ndarray, pixel_size_A: float, float16: bool = False) -> None:
    """Write an ``(n, N, N)`` image stack as an MRC image stack (``.mrcs``)."""
    arr = np.asarray(stack)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"a 2D stack must be (n, N, N), got shape {arr.shape}")
    write_map(path, arr, pixel_size_A, float16=float16, image_stack=True)


def read_particle_stack2d(pset: ParticleSet, index: int) -> np.ndarray:
    """Read the 2D stack of particle ``index`` (0-based), checked against its optics group
    and ``rlnTomoVisibleFrames``.

    Returns
    -------
    numpy.ndarray
        float32 ``(n_visible, N, N)``.
    """
    row = pset.particles.iloc[index]
    group = int(row["rlnOpticsGroup"])
    n_frames = int(visible_frames(pset, index).sum()) if "rlnTomoVisibleFrames" in pset.particles.columns else None
    stack, _ = read_stack2d(
        resolve_path(pset, str(row["rlnImageName"])),
        box=box_size(pset, group),
        n_frames=n_frames,
        pixel_size_A=pixel_size(pset, group),
    )
    return stack
