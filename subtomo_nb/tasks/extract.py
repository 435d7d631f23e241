"""RELION's *Extract subtomos* (``relion_tomo_subtomo``): 2D stacks or 3D pseudo-subtomograms.

For every particle and every tilt ``f`` where it is visible (relion-conventions.md §5.3, 5.4):

1. position ``pos = coordinate − A_subtomo · origin / TS_pixel`` (tomogram pixels; RELION's
   ``apply_offsets``), projected ``q_f = P_f · pos``;
2. a square of ``s0 = binning · box`` tilt-image pixels starting at ``round(q_f) − s0/2`` is cut
   (indices clamped to the image), cropped to ``box`` in Fourier space
   (``fourier.filters.fourier_crop_half``), divided by ``binning`` (RELION's
   ``extractAt2D_Fourier``) and shifted by
   ``−(q_f − round(q_f)) / binning`` binned pixels so the particle sits at the box centre;
3. multiplied by ``−c_f`` with ``c_f = CTF_f · dw_f`` (RELION's CTF with the defocus at the
   particle's depth, ``Tomogram::getCtf``, and the exposure filter for the cumulative dose):
   CTF-premultiplied up to Nyquist, contrast inverted (particles white); weight ``c_f²``;
4. back in real space, RELION's ``cropCircle`` (radius ``crop/2``, 5-pixel cosine fall-off,
   mean outside the circle subtracted first);
5. ``stack2d=True``: the central ``crop × crop`` of each visible tilt is written to
   ``Subtomograms/<rlnTomoParticleName>_stack2d.mrcs``; ``stack2d=False``: the tilts are inserted
   into a ``crop³`` half transform (``fourier.stack2d.stack_to_pseudo_subtomo``, projection rows
   ``(crop/box) · P_f(3×3) · A_subtomo``; only the pixels of :func:`dose_insertion_mask`:
   inside the 2D Nyquist circle, dose weight above 0.01, ``--cutoff_fract``) and written as
   ``_data.mrc`` + ``_weights.mrc``.

Visibility (``Tomogram::getVisibilityMinFramesMaxDose``): the projected position lies more than
``binning · crop / 2`` pixels inside the tilt image, the cumulative dose is at most ``max_dose``
(if > 0), and a particle needs at least ``min_frames`` visible tilts (else it is dropped).

The output ``particles.star`` keeps the input columns, applies the origins to the coordinates
(``rlnCenteredCoordinate*Angst`` updated, ``rlnOrigin*Angst`` = 0), and gets RELION's optics
columns (``rlnCtfDataAreCtfPremultiplied``, ``rlnImageDimensionality``,
``rlnTomoSubtomogramBinning``, ``rlnImagePixelSize``, ``rlnImageSize``).

Scale and content of the 3D pseudo-subtomograms are relion_tomo_subtomo's (RELION 5,
``SubtomoProgram::processTomograms``; docs/internals.md): ``CTF · dose`` premultiplies every
frequency; the insertion uses only the 2D pixels inside the Nyquist circle whose dose weight
exceeds ``--cutoff_fract`` (:func:`dose_insertion_mask`); ``_data.mrc`` carries RELION's FFT
scale (:func:`relion_data_scale`), and ``_weights.mrc`` the CTF² and multiplicity sums as they
are. The 2D stacks carry RELION's values (``/ binning``).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from subtomo_nb.fourier.ctf import ctf_2d, dose_weight_2d
from subtomo_nb.fourier.fft import irfft2, rfft2, shift_half
from subtomo_nb.fourier.filters import fourier_crop_half
from subtomo_nb.fourier.stack2d import stack_to_pseudo_subtomo
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.tilt_series import projection_matrices
from subtomo_nb.io._paths import find_project_dir, project_relative, resolve_relative, split_image_name
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_header, read_map
from subtomo_nb.io.optimisation_set import OptimisationSet, read_optimisation_set, write_optimisation_set
from subtomo_nb.io.particles import ParticleSet, pixel_size, subtomogram_binning, visible_frames, write_particles
from subtomo_nb.io.star import read_star
from subtomo_nb.io.subtomo import PseudoSubtomo, read_particle_stack2d, write_pseudo_subtomo, write_stack2d
from subtomo_nb.io.tomograms import TomogramSet, read_tomograms

__all__ = ["extract_subtomos", "load_tilt_stack", "extract_tilt_patches", "crop_circle", "particle_positions",
           "tilt_ctf_weights", "dose_insertion_mask", "relion_data_scale", "tilt_image_size",
           "stack2d_pseudo_subtomo", "DOSE_CUTOFF_FRACTION",
           "CIRCLE_FALLOFF_PX"]

#: 2D pixels whose dose weight does not exceed this are not inserted into a 3D pseudo-subtomogram
#: (RELION ``--cutoff_fract``, ``Tomogram::findDoseXRanges``).
DOSE_CUTOFF_FRACTION = 0.01
#: Width of the soft edge of RELION's circular crop of 2D images (pixels).
CIRCLE_FALLOFF_PX = 5.0

_CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
_ORIGIN = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
_SUBTOMO = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
_DECENTRED = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")


# --------------------------------------------------------------------------------------------
# Numerical pieces
# --------------------------------------------------------------------------------------------


def crop_circle(images: np.ndarray, boundary: float = 0.0, falloff: float = CIRCLE_FALLOFF_PX) -> np.ndarray:
    """RELION's ``TomoExtraction::cropCircle`` on a batch of images ``(..., N, N)``.

    The mean of the pixels outside radius ``N//2 − boundary`` is subtracted, then the images are
    multiplied by 1 inside ``radius − falloff``, a raised cosine to 0 at ``radius``, and 0 outside
    (centre at pixel ``N//2``).
    """
    n = images.shape[-1]
    mx = float(n // 2)
    rad = mx - boundary
    y, x = np.indices((n, n), dtype=np.float64)
    r = np.hypot(x - mx, y - mx)
    outside = r > rad
    if outside.any():
        mean_out = images[..., outside].mean(axis=-1)[..., None, None]
    else:
        mean_out = np.zeros(images.shape[:-2] + (1, 1), dtype=images.dtype)
    c = np.where(r < rad - falloff, 1.0, np.where(r < rad, 0.5 - 0.5 * np.cos(np.pi * (rad - r) / falloff), 0.0))
    return (c.astype(images.dtype) * (images - mean_out)).astype(images.dtype, copy=False)


def extract_tilt_patches(stack: np.ndarray, frames: np.ndarray, centres_xy: np.ndarray, box: int,
                         binning: float = 1.0) -> np.ndarray:
    """Binned, centred patches around projected positions, as half transforms.

    Parameters
    ----------
    stack
        Tilt images ``(F, H, W)`` (tilt-series pixels).
    frames
        ``(N,)`` frame index of each patch.
    centres_xy
        ``(N, 2)`` projected positions ``(x, y)`` in tilt-image pixels.
    box
        Output box (binned pixels).
    binning
        Binning factor; the patch cut from the image is ``round(binning · box)`` pixels.

    Returns
    -------
    numpy.ndarray
        complex64 ``(N, box, box//2+1)`` half transforms (:func:`~subtomo_nb.fourier.fft.rfft2`
        convention) of the patches, cropped in Fourier space to ``box``
        (:func:`~subtomo_nb.fourier.filters.fourier_crop_half`) and divided by ``binning``
        (RELION), shifted so that each position lies on the box centre.
    """
    s0 = int(binning * box + 0.5)
    F, H, W = stack.shape
    c = np.asarray(centres_xy, dtype=np.float64)
    r = np.rint(c)
    start = r.astype(np.int64) - s0 // 2
    frames = np.asarray(frames, dtype=np.int64)
    inside = (start >= 0).all(axis=1) & (start[:, 0] + s0 <= W) & (start[:, 1] + s0 <= H)
    if inside.all() and s0 <= min(H, W):
        # whole rows copied from a strided view of all s0 x s0 windows (no per-pixel indices)
        win = np.lib.stride_tricks.sliding_window_view(stack, (s0, s0), axis=(1, 2))
        patches = win[frames, start[:, 1], start[:, 0]]
    else:  # RELION clamps pixel indices at the image border
        off = np.arange(s0)
        ix = np.clip(start[:, 0:1] + off[None, :], 0, W - 1)
        iy = np.clip(start[:, 1:2] + off[None, :], 0, H - 1)
        patches = stack[frames[:, None, None], iy[:, :, None], ix[:, None, :]]
    X = rfft2(patches.astype(np.float32, copy=False))
    if s0 != box:  # RELION crops in Fourier space, then divides by the binning (extractAt2D_Fourier)
        X = fourier_crop_half(X, s0, box, ndim=2) / np.float32(binning)
    return shift_half(X, -(c - r) / binning, box).astype(np.complex64)


def particle_positions(particles: pd.DataFrame, tomo_row: pd.Series, apply_offsets: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Particle positions (decentred tomogram pixels) and subtomogram matrices.

    ``pos = centred_Å / TS_pixel + size / 2 − A_subtomo · origin_Å / TS_pixel``
    (``ParticleSet::getPosition``); RELION-4 ``rlnCoordinateX/Y/Z`` (pixels) are used when the
    centred columns are absent. Missing origins count as 0, missing subtomogram angles as identity.

    Returns
    -------
    pos : numpy.ndarray
        ``(P, 3)`` pixels.
    A_subtomo : numpy.ndarray
        ``(P, 3, 3)``.
    """
    pix = float(tomo_row["rlnTomoTiltSeriesPixelSize"])
    n = len(particles)
    if all(c in particles.columns for c in _CENTRED):
        size = np.array([float(tomo_row[k]) for k in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")])
        pos = particles[list(_CENTRED)].to_numpy(np.float64) / pix + size / 2.0
    elif all(c in particles.columns for c in _DECENTRED):
        pos = particles[list(_DECENTRED)].to_numpy(np.float64)
    else:
        raise InputError(None, "particles have neither rlnCenteredCoordinate*Angst nor rlnCoordinateX/Y/Z",
                         field=_CENTRED[0])
    if all(c in particles.columns for c in _SUBTOMO):
        A = euler_to_matrix(*(particles[c].to_numpy(np.float64) for c in _SUBTOMO))
    else:
        A = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    if apply_offsets and any(c in particles.columns for c in _ORIGIN):
        o = np.stack([particles[c].to_numpy(np.float64) if c in particles.columns else np.zeros(n)
                      for c in _ORIGIN], axis=1)
        pos = pos - np.einsum("pij,pj->pi", A, o) / pix
    return pos, A


def _whole_stack_name(tset: TomogramSet, name: str) -> str | None:
    """``rlnTomoTiltSeriesName`` of a tomogram (IMOD ``:mrc`` suffix removed), or None if absent."""
    row = tset.row(name)
    if "rlnTomoTiltSeriesName" in row.index and str(row["rlnTomoTiltSeriesName"]).strip():
        return str(row["rlnTomoTiltSeriesName"]).strip().removesuffix(":mrc")
    return None


def load_tilt_stack(tset: TomogramSet, name: str) -> np.ndarray:
    """The tilt images of one tomogram as ``(F, H, W)`` float32, in tilt-series (frame) order.

    RELION 5 (``TomogramSet::loadTomogram``): ``rlnTomoTiltSeriesName`` of ``data_global`` if
    present (a whole stack; an IMOD ``:mrc`` suffix is removed), else each tilt row's
    ``rlnMicrographName`` (a file or ``n@stack``). Names are relative to the project directory.
    """
    proj = tset.project_dir
    fn = _whole_stack_name(tset, name)
    if fn is not None:
        data, _ = read_map(resolve_relative(proj, fn))
        return data.reshape((-1,) + data.shape[-2:])
    table = tset.tilt_table(name)
    if "rlnMicrographName" not in table.columns:
        raise InputError(tset.path, f"tilt series {name!r} names no images (rlnMicrographName)",
                         field="rlnMicrographName")
    mics = [split_image_name(m) for m in table["rlnMicrographName"].astype(str).tolist()]
    if len({fn for _, fn in mics}) == 1 and [i for i, _ in mics] == list(range(1, len(mics) + 1)):
        data, _ = read_map(resolve_relative(proj, mics[0][1]))  # one stack, frames in order
        data = data.reshape((-1,) + data.shape[-2:])
        if data.shape[0] == len(mics):
            return data
    cache: dict[str, np.ndarray] = {}
    frames = []
    for i, mic in enumerate(table["rlnMicrographName"].astype(str).tolist()):
        idx, fn = split_image_name(mic)
        if fn not in cache:
            data, _ = read_map(resolve_relative(proj, fn))
            cache[fn] = data.reshape((-1,) + data.shape[-2:])
        arr = cache[fn]
        k = 0 if idx is None else idx - 1
        if not 0 <= k < arr.shape[0]:
            raise InputError(tset.path, f"image {mic!r} is not in its stack of {arr.shape[0]}", row=i + 1,
                             field="rlnMicrographName")
        frames.append(arr[k])
    return np.stack(frames).astype(np.float32, copy=False)


def tilt_ctf_weights(tomo_row: pd.Series, table: pd.DataFrame, P: np.ndarray, pos: np.ndarray,
                     pidx: np.ndarray, fidx: np.ndarray, box: int, bin_pix: float,
                     bfactor_per_dose: float = 0.0, return_dose: bool = False
                     ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """CTF × dose weight ``c_f`` of each observation (particle ``pidx``, tilt ``fidx``).

    The defocus is the tilt's, changed by ``hand · TS pixel · slope · depth`` with the particle's
    depth along the tilt's beam (RELION's ``Tomogram::getCtf``). As relion_tomo_subtomo, ``c_f``
    covers every frequency up to Nyquist (its comment: "Apply doseWeights until Nyquist
    frequency! Otherwise, convolution artefacts when do_circle_crop"); the dose cut-off
    (``--cutoff_fract``) only limits which pixels a 3D insertion uses
    (:func:`dose_insertion_mask`). Returns ``(n_obs, box, box//2+1)`` float32 on the half grid
    of a ``box`` image with ``bin_pix`` Å pixels; with ``return_dose`` also the dose weights.
    """
    pix = float(tomo_row["rlnTomoTiltSeriesPixelSize"])
    hand = float(tomo_row["rlnTomoHand"]) if "rlnTomoHand" in tomo_row.index else -1.0
    slope = float(tomo_row["rlnTomoDefocusSlope"]) if "rlnTomoDefocusSlope" in tomo_row.index else 1.0
    size = np.array([float(tomo_row[k]) for k in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")])
    ph = np.concatenate([pos, np.ones((len(pos), 1))], axis=1)
    depth_p = np.einsum("fj,pj->pf", P[:, 2, :], ph)               # (p, F)
    cz = P[:, 2, :] @ np.append(size / 2.0, 1.0)                   # depth of the tomogram centre
    depth = depth_p[pidx, fidx] - cz[fidx]
    dz = hand * pix * slope * depth
    col = lambda name, default: (table[name].to_numpy(np.float64) if name in table.columns  # noqa: E731
                                 else np.full(len(table), default))
    du, dv, da = col("rlnDefocusU", 0.0), col("rlnDefocusV", 0.0), col("rlnDefocusAngle", 0.0)
    phase, bfac, scale = col("rlnPhaseShift", 0.0), col("rlnCtfBfactor", 0.0), col("rlnCtfScalefactor", 1.0)
    dose = col("rlnMicrographPreExposure", 0.0)
    ctf = ctf_2d(box, bin_pix, float(tomo_row["rlnVoltage"]), float(tomo_row["rlnSphericalAberration"]),
                 float(tomo_row["rlnAmplitudeContrast"]), du[fidx] + dz, dv[fidx] + dz, da[fidx],
                 phase[fidx], bfac[fidx], scale[fidx], dtype=np.float32)
    dw = dose_weight_2d(box, bin_pix, dose[fidx], bfactor_per_dose=bfactor_per_dose, dtype=np.float32)
    c = ctf * dw
    return (c, dw) if return_dose else c


def dose_insertion_mask(dose_weights: np.ndarray, cutoff_fraction: float = DOSE_CUTOFF_FRACTION) -> np.ndarray:
    """Which half-grid pixels of each tilt a 3D insertion uses (RELION's ``findDoseXRanges``).

    For every tilt and row ``y`` (signed ``yy``), RELION keeps the columns ``x < xRange(y)``,
    where ``xRange(y)`` is one more than the last ``x`` with ``x ≤ sqrt(s²/4 − yy²)`` (inside the
    2D Nyquist circle) whose dose weight exceeds ``cutoff_fraction``, or 0 if there is none.

    Parameters
    ----------
    dose_weights
        ``(..., s, s//2+1)`` dose weights on the half grid of an ``s``-pixel image.
    cutoff_fraction
        RELION's ``--cutoff_fract``.

    Returns
    -------
    numpy.ndarray
        Boolean, the shape of ``dose_weights``.
    """
    dw = np.asarray(dose_weights)
    s, sh = dw.shape[-2], dw.shape[-1]
    y = np.arange(s)
    yy = np.where(y < s // 2, y, y - s).astype(np.float64)
    x = np.arange(sh)
    r2 = s * s / 4.0 - yy * yy                                      # odd s: row -(s//2+1) has none
    xmax = np.where(r2 >= 0, np.sqrt(np.maximum(r2, 0.0)), -1.0)
    cond = (x[None, :] <= xmax[:, None]) & (dw > cutoff_fraction)
    xrange = (cond * (x + 1)).max(axis=-1, keepdims=True)           # last kept x + 1, 0 if none
    return x < xrange


def relion_data_scale(box: int, crop: int, binning: float) -> float:
    """Factor between our summed 3D insertion and relion_tomo_subtomo's ``_data.mrc``.

    RELION transforms the ``s0 = round(binning · box)`` tilt-image patches with unitary FFTs
    (``FFT::Both``: ``1/s0`` on a 2D forward transform), divides by ``binning`` after Fourier
    cropping, inserts, multiplies the 3D sum by ``normfft = box / (crop · sqrt(binning))`` (where
    that differs from 1 by more than 1e-4) and inverts with the unitary 3D FFT (``1/crop^1.5``).
    Our patches are transformed with the ``1/N`` forward convention (:func:`~subtomo_nb.fourier.fft.rfft2`),
    which is ``s0`` times smaller, and :func:`~subtomo_nb.fourier.fft.irfft3` is the unnormalised
    inverse, so RELION's volume is ``irfft3(sum) · s0 · normfft / crop^1.5``, i.e.
    ``sqrt(binning) · box² / crop^2.5`` up to the rounding of ``s0``. Our box-grid transforms
    carry ``1 / box²``, so relative to the particle images RELION's scale does not depend on
    ``box``: a sum of crop-grid transforms takes ``sqrt(binning / crop)``.
    """
    s0 = int(binning * box + 0.5)
    normfft = box / (crop * np.sqrt(binning))
    if abs(normfft - 1.0) <= 1e-4:
        normfft = 1.0
    return float(s0 * normfft / crop ** 1.5)


@functools.lru_cache(maxsize=1024)
def _image_size_of(path: str, mtime_ns: int, size: int) -> tuple[int, int]:
    """``(W, H)`` from one MRC header; cached per file version (path, modification time, size)."""
    shape = read_header(path).shape
    return int(shape[-1]), int(shape[-2])


def tilt_image_size(tset: TomogramSet, name: str) -> tuple[int, int]:
    """``(W, H)`` of a tomogram's tilt images, from the MRC header (no image data read).

    The header is read once per file: loading every 2D-stack particle of a tomogram asks for the
    same size, and a file rewritten since (another modification time or size) is read again.
    """
    fn = _whole_stack_name(tset, name)
    if fn is None:
        fn = split_image_name(str(tset.tilt_table(name)["rlnMicrographName"].iloc[0]))[1]
    path = resolve_relative(tset.project_dir, fn)
    try:
        st = os.stat(path)
    except OSError:
        shape = read_header(path).shape   # raises the InputError that names the missing file
        return int(shape[-1]), int(shape[-2])
    return _image_size_of(str(path), st.st_mtime_ns, st.st_size)


def stack2d_pseudo_subtomo(pset: ParticleSet, tset: TomogramSet, index: int) -> PseudoSubtomo:
    """A 2D-stack particle as a 3D pseudo-subtomogram (what extraction with ``--no_stack2d`` writes).

    The stack's visible tilt images (CTF-premultiplied, real space) are inserted into a 3D half
    transform with RELION's forward insertion (:func:`~subtomo_nb.fourier.stack2d.stack_to_pseudo_subtomo`),
    with each tilt's projection ``P_f · A_subtomo`` and CTF² × dose² weight.

    Parameters
    ----------
    pset
        Particle set of 2D stacks (``rlnTomoVisibleFrames``).
    tset
        Its tomogram set.
    index
        0-based particle row.
    """
    row = pset.particles.iloc[[index]]
    name = str(row["rlnTomoName"].iloc[0])
    trow, table = tset.row(name), tset.tilt_table(name)
    pix = float(trow["rlnTomoTiltSeriesPixelSize"])
    size = np.array([float(trow[k]) for k in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")])
    P = projection_matrices(table, size, pix, tilt_image_size(tset, name))
    pos, A = particle_positions(row, trow)
    frames = np.flatnonzero(visible_frames(pset, index))
    imgs = read_particle_stack2d(pset, index).astype(np.float32)
    if len(frames) != imgs.shape[0]:
        raise InputError(pset.path, f"{len(frames)} visible frames but {imgs.shape[0]} images in the stack",
                         row=index + 1, field="rlnTomoVisibleFrames")
    crop = imgs.shape[-1]
    group = int(row["rlnOpticsGroup"].iloc[0])
    bpd = float(trow["rlnCtfBfactorPerElectronDose"]) if "rlnCtfBfactorPerElectronDose" in trow.index else 0.0
    c, dw = tilt_ctf_weights(trow, table, P, pos, np.zeros(len(frames), dtype=np.int64), frames, crop,
                             pixel_size(pset, group), bpd, return_dose=True)
    rows = np.einsum("fij,jk->fik", P[frames, :3, :3], A[0])[:, :2, :]
    binning = subtomogram_binning(pset, group)
    data, ctf2, mult = stack_to_pseudo_subtomo(rfft2(imgs), c * c, rows, crop,
                                               data_scale=relion_data_scale(crop, crop, binning),
                                               insert_mask=dose_insertion_mask(dw))
    return PseudoSubtomo(data=data.astype(np.float32), ctf2=ctf2.astype(np.float32),
                         multiplicity=mult.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


def _read_inputs(source: str | os.PathLike | OptimisationSet, tomograms: str | os.PathLike | None
                 ) -> tuple[Path, Path, OptimisationSet | None]:
    oset: OptimisationSet | None = None
    if isinstance(source, OptimisationSet):
        oset = source
    else:
        p = Path(source)
        blocks = read_star(p)
        first = next(iter(blocks.values())) if blocks else None
        is_oset = isinstance(first, dict) and any(k.startswith("rlnTomo") and k.endswith("File") for k in first)
        if is_oset:
            oset = read_optimisation_set(p)
    if oset is not None:
        part = oset.resolve("rlnTomoParticlesFile")
        if part is None:
            raise InputError(oset.path, "optimisation set names no particles", field="rlnTomoParticlesFile")
        tomo = Path(tomograms) if tomograms is not None else oset.resolve("rlnTomoTomogramsFile")
        if tomo is None:
            raise InputError(oset.path, "optimisation set names no tomograms", field="rlnTomoTomogramsFile")
        return part, tomo, oset
    if tomograms is None:
        raise ValueError("tomograms is required when a particle file (not an optimisation set) is given")
    return Path(source), Path(tomograms), None


def _optics_table(optics_in: pd.DataFrame | None, particles: pd.DataFrame, tset: TomogramSet,
                  binning: float, crop: int, dim: int) -> tuple[pd.DataFrame, np.ndarray]:
    """RELION's extraction optics table and each particle's optics group."""
    if optics_in is None or len(optics_in) == 0 or "rlnOpticsGroup" not in particles.columns:
        rows = []
        groups = np.zeros(len(particles), dtype=np.int64)
        names = particles["rlnTomoName"].astype(str).to_numpy()
        for g, name in enumerate(tset.names):
            tr = tset.row(name)
            rows.append({"rlnOpticsGroup": g + 1, "rlnOpticsGroupName": f"optics{g + 1}",
                         "rlnVoltage": float(tr["rlnVoltage"]),
                         "rlnSphericalAberration": float(tr["rlnSphericalAberration"]),
                         "rlnAmplitudeContrast": float(tr["rlnAmplitudeContrast"]),
                         "rlnTomoTiltSeriesPixelSize": float(tr["rlnTomoTiltSeriesPixelSize"])})
            groups[names == name] = g + 1
        optics = pd.DataFrame(rows)
    else:
        optics = optics_in.copy()
        groups = particles["rlnOpticsGroup"].to_numpy(np.int64)
        if "rlnTomoTiltSeriesPixelSize" not in optics.columns:
            first = particles.groupby("rlnOpticsGroup")["rlnTomoName"].first()
            optics["rlnTomoTiltSeriesPixelSize"] = [
                float(tset.row(first.get(g, tset.names[0]))["rlnTomoTiltSeriesPixelSize"])
                for g in optics["rlnOpticsGroup"].tolist()]
    ts_pix = optics["rlnTomoTiltSeriesPixelSize"].to_numpy(np.float64)
    for label, value in (("rlnCtfDataAreCtfPremultiplied", np.ones(len(optics), dtype=np.int64)),
                         ("rlnImageDimensionality", np.full(len(optics), dim, dtype=np.int64)),
                         ("rlnTomoSubtomogramBinning", np.full(len(optics), float(binning))),
                         ("rlnImagePixelSize", ts_pix * float(binning)),
                         ("rlnImageSize", np.full(len(optics), int(crop), dtype=np.int64))):
        if label in optics.columns:
            optics = optics.drop(columns=[label])
        optics[label] = value
    return optics, groups


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _process_chunk(stack: np.ndarray, P: np.ndarray, table: pd.DataFrame, tomo_row: pd.Series,
                   pos: np.ndarray, A: np.ndarray, vis: np.ndarray, out_roots: list[Path], *,
                   box: int, crop: int, binning: float, stack2d: bool, float16: bool,
                   bfactor_per_dose: float) -> None:
    """Extract and write the particles of one chunk (all arrays restricted to the chunk)."""
    pix = float(tomo_row["rlnTomoTiltSeriesPixelSize"])
    bin_pix = pix * binning
    pidx, fidx = np.nonzero(vis)
    ph = np.concatenate([pos, np.ones((len(pos), 1))], axis=1)
    q = np.einsum("fij,pj->pfi", P[:, :3, :], ph)  # (p, F, 3)
    qs = q[pidx, fidx]
    X = extract_tilt_patches(stack, fidx, qs[:, :2], box, binning)
    c, dw = tilt_ctf_weights(tomo_row, table, P, pos, pidx, fidx, box, bin_pix, bfactor_per_dose,
                             return_dose=True)
    X = X * (-c)
    W = c * c
    boundary = (box - crop) // 2
    real = crop_circle(irfft2(X, box).astype(np.float32), boundary)
    if not stack2d:
        X = rfft2(real)
        rows = (crop / box) * np.einsum("fij,pjk->pfik", P[:, :3, :3], A)[pidx, fidx][:, :2, :]
        keep = dose_insertion_mask(dw)
        data_scale = relion_data_scale(box, crop, binning)
    starts = np.concatenate([[0], np.cumsum(vis.sum(axis=1))])
    for p, root in enumerate(out_roots):
        sl = slice(int(starts[p]), int(starts[p + 1]))
        if stack2d:
            imgs = real[sl, boundary:boundary + crop, boundary:boundary + crop]
            write_stack2d(f"{root}_stack2d.mrcs", imgs, bin_pix, float16=float16)
        else:
            data, ctf2, mult = stack_to_pseudo_subtomo(X[sl], W[sl], rows[sl], crop, data_scale=data_scale,
                                                       insert_mask=keep[sl])
            ps = PseudoSubtomo(data=data.astype(np.float32), ctf2=ctf2.astype(np.float32),
                               multiplicity=mult.astype(np.float32))
            write_pseudo_subtomo(f"{root}_data.mrc", f"{root}_weights.mrc", ps, bin_pix, float16=float16)


def extract_subtomos(
    optimisation_set_or_particles: str | os.PathLike | OptimisationSet,
    tomograms: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    binning: float = 1,
    box: int = 128,
    crop: int = -1,
    max_dose: float = -1,
    min_frames: int = 1,
    stack2d: bool = True,
    float16: bool = True,
    n_workers: int = 1,
    chunk_pixels: int = 1 << 24,
) -> Path:
    """Extract subtomograms as RELION 5's ``relion_tomo_subtomo`` (job "Extract subtomos").

    Parameters
    ----------
    optimisation_set_or_particles
        An optimisation set (file or :class:`~subtomo_nb.io.optimisation_set.OptimisationSet`)
        naming particles and tomograms, or a particle STAR file (picks or refined particles).
    tomograms
        ``tomograms.star``; None to take it from the optimisation set.
    out_dir
        Job directory; receives ``particles.star``, ``optimisation_set.star`` and
        ``Subtomograms/``. Nothing is written elsewhere and the inputs are not modified.
    binning
        Binning factor relative to the tilt series (``--bin``).
    box
        Box size in binned pixels (``--b``).
    crop
        Output box (``--crop``); −1 = ``box``.
    max_dose
        Ignore tilts with cumulative dose above this (e/Å², ``--max_dose``); −1 = all.
    min_frames
        Drop particles visible in fewer tilts (``--min_frames``).
    stack2d
        Write RELION 5 2D stacks (default) instead of 3D pseudo-subtomograms.
    float16
        Write images in MRC mode 12 (``--float16``).
    n_workers
        Threads processing particle chunks in parallel.
    chunk_pixels
        Tilt-image pixels cut per chunk (memory bound: about 4 bytes each).

    Returns
    -------
    pathlib.Path
        The written ``particles.star``.
    """
    box = int(box)
    crop = box if crop is None or int(crop) <= 0 else int(crop)
    if crop > box:
        raise ValueError(f"crop ({crop}) larger than box ({box})")
    if crop % 2 or box % 2:
        raise ValueError(f"box ({box}) and crop ({crop}) must be even numbers of pixels")
    out = Path(out_dir).absolute()
    part_path, tomo_path, oset_in = _read_inputs(optimisation_set_or_particles, tomograms)
    tset = read_tomograms(tomo_path, require_tilt_series=True)
    blocks = read_star(part_path)
    if "particles" not in blocks or not isinstance(blocks["particles"], pd.DataFrame):
        raise InputError(part_path, "no data_particles block")
    parts = blocks["particles"].copy()
    if "rlnTomoName" not in parts.columns:
        raise InputError(part_path, "required column missing from data_particles", field="rlnTomoName")
    optics_in = blocks.get("optics") if isinstance(blocks.get("optics"), pd.DataFrame) else None
    project = tset.project_dir or find_project_dir(part_path, None)
    names = parts["rlnTomoName"].astype(str).to_numpy()
    if "rlnTomoParticleName" not in parts.columns:
        counter: dict[str, int] = {}
        pnames = []
        for n in names:
            counter[n] = counter.get(n, 0) + 1
            pnames.append(f"{n}/{counter[n]}")
        parts["rlnTomoParticleName"] = pnames
    optics, groups = _optics_table(optics_in, parts, tset, binning, crop, 2 if stack2d else 3)
    parts["rlnOpticsGroup"] = groups

    keep = np.zeros(len(parts), dtype=bool)
    new_centred = np.zeros((len(parts), 3))
    visible_str = np.empty(len(parts), dtype=object)
    out_rel = project_relative(out, project)
    image_names = np.empty(len(parts), dtype=object)
    ctf_names = np.empty(len(parts), dtype=object)
    pool = ThreadPoolExecutor(max_workers=int(n_workers)) if int(n_workers) > 1 else None
    try:
        for name in tset.names:
            sel = np.flatnonzero(names == name)
            if sel.size == 0:
                continue
            trow = tset.row(name)
            table = tset.tilt_table(name)
            stack = load_tilt_stack(tset, name)
            F, H, W = stack.shape
            if F != len(table):
                raise InputError(tset.path, f"tilt series {name!r}: {len(table)} rows but {F} images",
                                 field="rlnMicrographName")
            pix = float(trow["rlnTomoTiltSeriesPixelSize"])
            size = np.array([float(trow[k]) for k in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")])
            P = projection_matrices(table, size, pix, (W, H))
            pos, A = particle_positions(parts.iloc[sel], trow)
            q = np.einsum("fij,pj->pfi", P[:, :2, :3], pos) + P[None, :, :2, 3]
            rad = binning * crop / 2.0
            vis = (q[..., 0] > rad) & (q[..., 0] < W - rad) & (q[..., 1] > rad) & (q[..., 1] < H - rad)
            if max_dose > 0:
                vis &= table["rlnMicrographPreExposure"].to_numpy(np.float64)[None, :] <= max_dose
            ok = vis.sum(axis=1) >= max(1, int(min_frames))
            idx = sel[ok]
            pos, A, vis = pos[ok], A[ok], vis[ok]
            keep[idx] = True
            new_centred[idx] = (pos - size / 2.0) * pix
            pn = parts["rlnTomoParticleName"].astype(str).to_numpy()[idx]
            roots = [out / "Subtomograms" / p for p in pn]
            for root in {r.parent for r in roots}:
                root.mkdir(parents=True, exist_ok=True)
            for i, p in zip(idx, pn):
                rel = f"{out_rel}/Subtomograms/{p}"
                image_names[i] = rel + ("_stack2d.mrcs" if stack2d else "_data.mrc")
                ctf_names[i] = rel + "_weights.mrc"
            for i, v in zip(idx, vis):
                visible_str[i] = "[" + ",".join("1" if b else "0" for b in v) + "]"
            s0 = int(binning * box + 0.5)
            per_particle = max(1, int(vis.sum(axis=1).max()) * s0 * s0) if len(vis) else 1
            n_chunk = max(1, int(chunk_pixels) // per_particle)
            bpd = float(trow["rlnCtfBfactorPerElectronDose"]) if "rlnCtfBfactorPerElectronDose" in trow.index else 0.0
            jobs = []
            for a in range(0, len(idx), n_chunk):
                b = slice(a, a + n_chunk)
                args = (stack, P, table, trow, pos[b], A[b], vis[b], roots[b])
                kw = dict(box=box, crop=crop, binning=binning, stack2d=stack2d, float16=float16,
                          bfactor_per_dose=bpd)
                if pool is None:
                    _process_chunk(*args, **kw)
                else:
                    jobs.append(pool.submit(_process_chunk, *args, **kw))
            for j in jobs:
                j.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)

    res = parts.loc[keep].copy()
    for k, label in enumerate(_CENTRED):
        res[label] = new_centred[keep, k]
    for label in _ORIGIN:
        res[label] = 0.0
    res = res.drop(columns=[c for c in _DECENTRED if c in res.columns])
    res["rlnImageName"] = image_names[keep].tolist()
    if stack2d:
        res = res.drop(columns=[c for c in ("rlnCtfImage",) if c in res.columns])
        res["rlnTomoVisibleFrames"] = visible_str[keep].tolist()
    else:
        res["rlnCtfImage"] = ctf_names[keep].tolist()
        res = res.drop(columns=[c for c in ("rlnTomoVisibleFrames",) if c in res.columns])
    general = dict(blocks["general"]) if isinstance(blocks.get("general"), dict) else {}
    general["rlnTomoSubTomosAre2DStacks"] = 1 if stack2d else 0
    used = np.unique(res["rlnOpticsGroup"].to_numpy()) if len(res) else np.zeros(0)
    optics = optics[optics["rlnOpticsGroup"].isin(used) | (len(res) == 0)].reset_index(drop=True)
    pset = ParticleSet(general=general, optics=optics, particles=res.reset_index(drop=True), project_dir=project)
    out.mkdir(parents=True, exist_ok=True)
    part_out = out / "particles.star"
    write_particles(part_out, pset)
    # RELION's OptimisationSet::write keeps particles, tomograms, trajectories and manifolds only
    entries = {k: v for k, v in (oset_in.to_dict() if oset_in is not None else {}).items()
               if k in ("rlnTomoTrajectoriesFile", "rlnTomoManifoldsFile")}
    entries["rlnTomoParticlesFile"] = project_relative(part_out, project)
    entries["rlnTomoTomogramsFile"] = project_relative(tomo_path, project)
    write_optimisation_set(out / "optimisation_set.star", OptimisationSet(entries))
    return part_out
