"""Rotate a map onto RELION's symmetry axes: ``relion_align_symmetry`` (conventions §7.3).

A map with a point-group symmetry ``G`` in an arbitrary orientation (e.g. a C1 initial model)
is rotated so that its symmetry axes lie on RELION's conventional axes for ``G`` (§7.1: the
n-fold of ``Cn``/``Dn`` on z, the 2-fold of ``Dn`` on x, ...). As RELION:

1. (model.star input) one class map is picked by size or resolution, or every class is tried
   and the one whose symmetry fits best is kept;
2. unless ``keep_centre``, the centre of mass is moved to the box centre (real-space linear
   interpolation, zero outside, ``selfTranslateCenterOfMassToCenter``);
3. the map is Fourier-cropped to the working box (default 64 px);
4. global search: ``nr_uniform`` random orientations, ``rot ~ U[0, 360)``,
   ``tilt`` in ``[0, 180)`` with density proportional to ``sin(tilt)`` (rejection sampling), ``psi ~
   U[0, 360)`` (only ``rot`` with ``only_rot``); each is scored by the squared difference
   between the rotated map ``V_rot(r) = V(A.T r)`` and its symmetrised copy;
5. local search around the best: ``rot + i*step``, ``tilt + j*step``, ``psi + k*range`` for
   ``i, j, k`` in ``-range..range`` (RELION steps psi by the *range*, not the step);
6. the full-size (re-centred) map is rotated with the best angles through the padded Fourier
   projector and, with ``apply_sym``, symmetrised in real space.

The output is ``V_out(r) = V(A.T r)`` with ``A = euler_to_matrix(rot, tilt, psi)`` (§1): a point
``u`` of the input appears at ``A u``, so an input symmetry axis ``u`` ends on ``A u``.

Score
-----
RELION inverse-transforms each rotated map, symmetrises it in real space and sums
``(rotated - symmetrised)**2`` over the working box. Here the same quantity is evaluated in
Fourier space (Parseval), batched over orientations: for the group average ``P`` (an
orthogonal projection), ``|V_rot - P V_rot|**2 = |V|**2 - (1/n) sum_g <V, V o M_g>`` with
``M_g = A.T R_g A``, and ``<V, V o M> = N**3 sum_k Re F(k) conj F(M k)`` over the frequencies
kept by the projector (``|k| <= r_max``). ``F(M k)`` is read from the padded transform with
trilinear interpolation (RELION's ``Projector``), and ``g`` and ``g^-1`` give the same term, so
each pair is sampled once. The symmetry mates are thus rotated exactly instead of by real-space
trilinear interpolation, and nothing is lost at the box edge; the scale (``N**3``) is that of
RELION's diff2 at the working box.

Other differences from RELION 5
-------------------------------
* RELION seeds the random orientations from the clock; here ``seed`` (default 0) makes runs
  reproducible.
* RELION treats any symmetry name containing ``C1`` (also ``C10``..``C19``) as C1 and writes the
  map unchanged; here only the group C1 does.
* ``--NN`` (nearest-neighbour rotation) is not implemented; the job reports it and uses
  linear interpolation.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from subtomo_nb._array import asnumpy, get_xp
from subtomo_nb.fourier.fft import irfft3
from subtomo_nb.fourier.filters import fourier_crop
from subtomo_nb.fourier.grid import half_points
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.symmetry import point_group, symmetrise_map
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_map, write_map
from subtomo_nb.io.star import read_star

__all__ = [
    "OUTPUT_NAME",
    "AlignResult",
    "align_symmetry",
    "align_symmetry_file",
    "centre_of_mass",
    "class_maps_from_model",
    "local_orientations",
    "random_orientations",
    "rotate_map",
    "run_align_symmetry_job",
    "run_from_args",
    "symmetry_scores",
    "translate_centre_of_mass_to_centre",
]

#: File the job writes in its directory (RELION's ``--o`` default).
OUTPUT_NAME = "aligned.mrc"

#: Sample points (orientations x symmetry operators x Fourier points) per batched gather.
_CHUNK_POINTS = 1_000_000

Report = Callable[[str], None]


@dataclass
class AlignResult:
    """Outcome of :func:`align_symmetry`.

    Attributes
    ----------
    volume : array
        Aligned map ``[z, y, x]`` at the input box size (symmetrised with ``apply_sym``),
        float32, same array module as the input.
    rot, tilt, psi : float
        Best RELION Euler angles (degrees); the output is ``V(A.T r)``.
    score : float
        Squared difference between the rotated and the symmetrised working-box map at the best
        orientation (RELION's diff2; 0 for C1).
    pixel_size_A : float
        Pixel size of ``volume`` (Å).
    working_box : int
        Box of the search (pixels); 0 when no search was made (C1).
    working_pixel_size_A : float
        Pixel size of the search box (Å).
    centre_shift_px : tuple of float
        Shift ``(x, y, z)`` applied to the input before rotation (minus its centre of mass;
        zeros with ``keep_centre``).
    source : pathlib.Path or None
        The map file aligned (the chosen class for a model.star input).
    seconds : float
        Wall-clock time of the alignment.
    scores : dict of str to float
        diff2 of every class tried (model.star input without a selection flag), by file.
    """

    volume: Any
    rot: float = 0.0
    tilt: float = 0.0
    psi: float = 0.0
    score: float = 0.0
    pixel_size_A: float = 0.0
    working_box: int = 0
    working_pixel_size_A: float = 0.0
    centre_shift_px: tuple[float, float, float] = (0.0, 0.0, 0.0)
    source: Path | None = None
    seconds: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def matrix(self) -> np.ndarray:
        """RELION rotation matrix ``A`` of the best angles (``(3, 3)``)."""
        return euler_to_matrix(self.rot, self.tilt, self.psi)


# ----------------------------------------------------------------------------------------------
# small pieces
# ----------------------------------------------------------------------------------------------


def _say(progress: Report | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _is_c1(ops: np.ndarray) -> bool:
    return len(ops) == 1


def _check_volume(volume: Any) -> None:
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"align_symmetry needs a cubic 3D map, got shape {tuple(volume.shape)}")


def _map_coordinates(xp: Any) -> Callable[..., Any]:
    if xp is np:
        from scipy.ndimage import map_coordinates
    else:  # pragma: no cover - GPU path
        from cupyx.scipy.ndimage import map_coordinates
    return map_coordinates


def centre_of_mass(volume: Any) -> np.ndarray:
    """Centre of mass ``(x, y, z)`` in pixels from the box centre ``N // 2`` (RELION's ``centerOfMass``).

    Every voxel counts with its signed value; a map with zero total mass gives ``(0, 0, 0)``.

    Parameters
    ----------
    volume
        Real 3D array ``[z, y, x]`` (numpy or cupy).

    Returns
    -------
    numpy.ndarray
        ``(3,)`` float64, pixels.
    """
    xp = get_xp(volume)
    v = xp.asarray(volume, dtype=xp.float64)
    mass = float(v.sum())
    if mass == 0.0:
        return np.zeros(3)
    com = []
    for axis in (2, 1, 0):  # x, y, z
        n = v.shape[axis]
        other = tuple(a for a in range(3) if a != axis)
        profile = v.sum(axis=other)
        com.append(float((profile * (xp.arange(n) - n // 2)).sum()) / mass)
    return np.asarray(com)


def translate_centre_of_mass_to_centre(volume: Any) -> tuple[Any, np.ndarray]:
    """Move the centre of mass to the box centre (``selfTranslateCenterOfMassToCenter``, no wrap).

    ``out(r) = in(r + c)`` with ``c`` the centre of mass, trilinear interpolation in real space,
    zero where the source lies outside the box.

    Parameters
    ----------
    volume
        Real 3D array ``[z, y, x]`` (numpy or cupy).

    Returns
    -------
    out : array
        The shifted map (same module and float dtype; float32 for integer input).
    shift_px : numpy.ndarray
        The applied shift ``(x, y, z) = -c`` in pixels.
    """
    xp = get_xp(volume)
    vol = xp.asarray(volume)
    dtype = vol.dtype if xp.issubdtype(vol.dtype, xp.floating) else xp.float32
    vol = vol.astype(dtype, copy=False)
    com = centre_of_mass(vol)
    if not np.any(com):
        return vol.copy(), -com
    nz, ny, nx = vol.shape
    z, y, x = xp.meshgrid(xp.arange(nz, dtype=xp.float64) + com[2], xp.arange(ny, dtype=xp.float64) + com[1],
                          xp.arange(nx, dtype=xp.float64) + com[0], indexing="ij")
    out = _map_coordinates(xp)(vol, xp.stack([z, y, x]), order=1, mode="constant", cval=0.0, prefilter=False)
    return out.astype(dtype, copy=False), -com


def _sin_weighted_tilts(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` tilts (degrees) in ``[0, 180)``, density ∝ ``sin(tilt)``, by rejection as RELION draws them."""
    out = np.empty(0)
    while out.size < n:
        m = 2 * (n - out.size) + 16
        tilt = rng.random(m) * 180.0
        keep = rng.random(m) < np.abs(np.sin(np.deg2rad(tilt)))
        out = np.concatenate([out, tilt[keep]])
    return out[:n]


def random_orientations(n: int, rng: np.random.Generator | int | None = 0, *, only_rot: bool = False) -> np.ndarray:
    """RELION's global-search orientations: uniform on the sphere, random in-plane angle.

    ``rot = 360 u``; ``tilt`` by rejection (``tilt = 180 u``, kept when ``u' < |sin(tilt)|``);
    ``psi = 360 u``. With ``only_rot``, ``tilt = psi = 0``.

    Parameters
    ----------
    n
        Number of orientations (``--nr_uniform``).
    rng
        ``numpy.random.Generator`` or a seed.
    only_rot
        Search the rotation about z only.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` ``(rot, tilt, psi)`` in degrees.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    rot = rng.random(n) * 360.0
    if only_rot:
        zeros = np.zeros(n)
        return np.stack([rot, zeros, zeros], axis=-1)
    tilt = _sin_weighted_tilts(n, rng)
    psi = rng.random(n) * 360.0
    return np.stack([rot, tilt, psi], axis=-1)


def local_orientations(rot: float, tilt: float, psi: float, search_range: int, step: float, *,
                       only_rot: bool = False) -> np.ndarray:
    """RELION's local-search grid around ``(rot, tilt, psi)``.

    ``(rot + i*step, tilt + j*step, psi + k*search_range)`` for ``i, j, k`` in
    ``-search_range..search_range`` (RELION steps psi by the range, not the step), ``i`` slowest;
    with ``only_rot`` only ``i`` varies.

    Parameters
    ----------
    rot, tilt, psi
        Centre of the grid (degrees).
    search_range
        Number of steps on either side (``--local_search_range``, an integer as in RELION).
    step
        Angular step of rot and tilt (degrees, ``--local_search_step``).
    only_rot
        Vary rot only.

    Returns
    -------
    numpy.ndarray
        ``(m, 3)`` angles in degrees, ``m = (2 r + 1)**3`` (``2 r + 1`` with ``only_rot``).
    """
    r = int(search_range)
    idx = np.arange(-r, r + 1, dtype=np.float64)
    other = np.zeros(1) if only_rot else idx
    i, j, k = np.meshgrid(idx, other, other, indexing="ij")
    return np.stack([rot + i.ravel() * step, tilt + j.ravel() * step, psi + k.ravel() * r], axis=-1)


def _operator_pairs(ops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-identity operators with one member per ``{g, g^-1}`` pair, and their multiplicities."""
    R = np.asarray(ops, dtype=np.float64).reshape(-1, 3, 3)
    eye = np.eye(3)
    rest = [i for i in range(len(R)) if not np.allclose(R[i], eye, atol=1e-9)]
    keep: list[int] = []
    mult: list[float] = []
    done: set[int] = set()
    for i in rest:
        if i in done:
            continue
        inv = [j for j in rest if np.allclose(R[j], R[i].T, atol=1e-6)]
        j = inv[0] if inv else i
        done.update({i, j})
        keep.append(i)
        mult.append(1.0 if j == i else 2.0)
    return R[keep], np.asarray(mult)


def _fourier_points(box: int, r_max: float, xp: Any, dtype: Any) -> tuple[Any, Any]:
    """Half-grid frequencies with ``|k| <= r_max`` and their Hermitian weights (2, or 1 on kx=0 and Nyquist)."""
    k = half_points(box, 3, xp, dtype).reshape(-1, 3)
    inside = (k * k).sum(axis=-1) <= r_max * r_max
    k = k[inside]
    w = xp.where((k[:, 0] == 0) | (k[:, 0] == box // 2), 1.0, 2.0).astype(dtype)
    return k, w


def symmetry_scores(projector: Projector, angles_deg: Any, ops: Any, *,
                    chunk_points: int = _CHUNK_POINTS) -> np.ndarray:
    """RELION's diff2 between each rotated map and its symmetrised copy, for many orientations.

    ``diff2(A) = |V_rot - P V_rot|**2`` (sum over the real-space box) with ``V_rot(r) = V(A.T r)``
    band-limited to ``projector.r_max`` and ``P`` the average over the operators; evaluated as
    ``N**3 (|F|**2 - (1/n) sum_g Re sum_k F(k) conj F(A.T R_g A k))`` (see the module notes),
    batched over orientations and operators.

    Parameters
    ----------
    projector
        :class:`~subtomo_nb.fourier.projector.Projector` of the working map.
    angles_deg
        ``(m, 3)`` RELION ``(rot, tilt, psi)`` in degrees.
    ops
        ``(n, 3, 3)`` point-group operators with the identity (:func:`point_group`).
    chunk_points
        Samples per batched gather (memory bound).

    Returns
    -------
    numpy.ndarray
        ``(m,)`` float64 scores (lower is more symmetric); zeros for C1.
    """
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3)
    n_ops = len(np.asarray(ops).reshape(-1, 3, 3))
    reps, mult = _operator_pairs(ops)
    if len(reps) == 0:
        return np.zeros(len(angles))
    xp = projector.xp
    box = projector.box
    k, w = _fourier_points(box, projector.r_max, xp, projector.rdtype)
    f0 = projector.sample(xp.eye(3, dtype=projector.rdtype), k)
    wre, wim = w * f0.real, w * f0.imag
    norm2 = float((wre * f0.real + wim * f0.imag).sum(dtype=xp.float64))
    A = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    # sampling matrices S with S.T = M_g = A.T R_g A, i.e. S = A.T R_g.T A
    S = np.einsum("bji,gkj,bkl->bgil", A, reps, A)
    # orientations with the same M_g score the same (e.g. psi for Cn): evaluate each once
    _, first, back = np.unique(np.round(S.reshape(len(S), -1), 9), axis=0, return_index=True,
                               return_inverse=True)
    S = S[first]
    per = max(1, chunk_points // max(1, len(reps) * len(k)))
    cross = np.empty(len(S))
    weights = xp.asarray(mult, dtype=xp.float64)
    for start in range(0, len(S), per):
        block = S[start:start + per]
        vals = projector.sample(xp.asarray(block.reshape(-1, 3, 3)), k)
        c = (vals.real @ wre + vals.imag @ wim).astype(xp.float64).reshape(len(block), len(reps))
        cross[start:start + len(block)] = asnumpy(c @ weights)
    return float(box) ** 3 * (norm2 - (norm2 + cross[np.ravel(back)]) / n_ops)


def rotate_map(volume: Any, rot: float, tilt: float, psi: float, *, pad: int = 2) -> Any:
    """``V(A.T r)`` through the padded Fourier projector (RELION's ``rotate3D``, linear interpolation).

    Frequencies beyond Nyquist (``|k| > N/2``) are dropped, as in RELION.

    Parameters
    ----------
    volume
        Real cubic map ``[z, y, x]`` (numpy or cupy).
    rot, tilt, psi
        RELION Euler angles (degrees).
    pad
        Padding factor of the transform.

    Returns
    -------
    array
        Rotated map, float32.
    """
    xp = get_xp(volume)
    vol = xp.asarray(volume, dtype=xp.float32)
    n = int(vol.shape[0])
    proj = Projector(vol, pad=pad)
    F = proj.rotate3d(xp.asarray(euler_to_matrix(rot, tilt, psi), dtype=xp.float32))
    return irfft3(F, n).astype(xp.float32)


def _best(angles: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, float]:
    i = int(np.argmin(scores))  # first minimum, as RELION's strict '<'
    return angles[i], float(scores[i])


def _working_radius(box: int, work_pixel_A: float, maxres_A: float) -> float:
    """Projector radius (Fourier pixels): Nyquist, or ``ceil(box * pixel / maxres)`` if smaller."""
    if maxres_A is None or maxres_A <= 0:
        return box / 2
    if work_pixel_A <= 0:
        raise ValueError("maxres needs the pixel size: the map header has none; give angpix")
    return float(min(math.ceil(box * work_pixel_A / maxres_A), box / 2))


# ----------------------------------------------------------------------------------------------
# the algorithm
# ----------------------------------------------------------------------------------------------


def align_symmetry(
    volume: Any,
    sym: str,
    pixel_size_A: float,
    *,
    box_size: int = 64,
    keep_centre: bool = False,
    only_rot: bool = False,
    nr_uniform: int = 400,
    maxres_A: float = -1,
    local_search_range: int = 2,
    local_search_step: float = 2,
    pad: int = 2,
    apply_sym: bool = False,
    seed: int | np.random.Generator | None = 0,
    progress: Report | None = None,
) -> AlignResult:
    """Rotate a map so that its symmetry axes lie on RELION's axes of ``sym`` (``relion_align_symmetry``).

    Parameters
    ----------
    volume
        Real cubic map ``[z, y, x]`` with an even box (numpy or cupy).
    sym
        Target point group (``C6``, ``D2``, ``I3``...; see :func:`point_group`). ``C1`` returns the
        map unchanged.
    pixel_size_A
        Pixel size of ``volume`` (Å); used for ``maxres_A`` and reported.
    box_size
        Working box (pixels, even); the map is Fourier-cropped to it (not above the input box).
    keep_centre
        Do not move the centre of mass to the box centre first.
    only_rot
        Search the rotation about z only (the symmetry axis is already on z).
    nr_uniform
        Random orientations of the global search.
    maxres_A
        Highest resolution used in the search (Å); ``<= 0``: Nyquist of the working box.
    local_search_range
        Steps on either side in the local search (integer).
    local_search_step
        Local step of rot and tilt (degrees).
    pad
        Padding factor of the Fourier projector.
    apply_sym
        Symmetrise the aligned map (real space, RELION's ``symmetriseMap``).
    seed
        Seed or generator of the random orientations (RELION seeds from the clock).
    progress
        Called with a message at each stage.

    Returns
    -------
    AlignResult

    Raises
    ------
    ValueError
        Unknown symmetry, non-cubic or odd box, odd ``box_size``, ``nr_uniform < 1``.
    """
    t0 = time.perf_counter()
    ops = point_group(sym)
    xp = get_xp(volume)
    vol = xp.asarray(volume, dtype=xp.float32)
    _check_volume(vol)
    if _is_c1(ops):
        _say(progress, f"symmetry {sym}: map left unchanged")
        return AlignResult(volume=vol.copy(), pixel_size_A=float(pixel_size_A), seconds=time.perf_counter() - t0)
    n = int(vol.shape[0])
    if n % 2:
        raise ValueError(f"the input box size must be even, got {n}")
    box = int(box_size)
    if box % 2 or box < 2:
        raise ValueError(f"the working box size must be an even number, got {box_size}")
    if nr_uniform < 1:
        raise ValueError(f"nr_uniform must be at least 1, got {nr_uniform}")
    if box > n:
        _say(progress, f"working box {box} px is larger than the input box; using {n} px")
        box = n

    shift = np.zeros(3)
    if not keep_centre:
        vol, shift = translate_centre_of_mass_to_centre(vol)
        _say(progress, "centre of mass moved to the box centre by ({:.2f}, {:.2f}, {:.2f}) px".format(*shift))
    work = fourier_crop(vol, box) if box < n else vol
    work_pix = float(pixel_size_A) * n / box
    r_max = _working_radius(box, work_pix, maxres_A)
    projector = Projector(xp.asarray(work, dtype=xp.float32), pad=pad, r_max=r_max)
    _say(progress, f"working box {box} px ({work_pix:.3g} Å/px), search to {r_max:g} Fourier px")

    angles = random_orientations(int(nr_uniform), seed, only_rot=only_rot)
    best, score = _best(angles, symmetry_scores(projector, angles, ops))
    _say(progress, f"global search over {len(angles)} orientations: rot {best[0]:.2f} tilt {best[1]:.2f} "
                   f"psi {best[2]:.2f} (diff2 {score:.6g})")
    local = local_orientations(*best, int(local_search_range), float(local_search_step), only_rot=only_rot)
    best, score = _best(local, symmetry_scores(projector, local, ops))
    _say(progress, f"local search over {len(local)} orientations: rot {best[0]:.2f} tilt {best[1]:.2f} "
                   f"psi {best[2]:.2f} (diff2 {score:.6g})")

    out = rotate_map(vol, *best, pad=pad)
    if apply_sym:
        out = symmetrise_map(out, ops)
        _say(progress, f"applied {sym} symmetry")
    return AlignResult(volume=out.astype(xp.float32, copy=False), rot=float(best[0]), tilt=float(best[1]),
                       psi=float(best[2]), score=score, pixel_size_A=float(pixel_size_A), working_box=box,
                       working_pixel_size_A=work_pix, centre_shift_px=tuple(float(s) for s in shift),
                       seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# input files
# ----------------------------------------------------------------------------------------------


def _resolve(name: str, project_dir: Path) -> Path:
    p = Path(os.path.expandvars(str(name)))
    return p if p.is_absolute() else project_dir / p


def class_maps_from_model(
    model_star: str | os.PathLike,
    *,
    select_largest_class: bool = False,
    select_highest_resol: bool = False,
    project_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Class maps named in a ``run_itNNN_model.star`` (table ``model_classes``).

    Parameters
    ----------
    model_star
        The model STAR file.
    select_largest_class
        Return only the class with the largest ``rlnClassDistribution`` (first on ties).
    select_highest_resol
        Return only the class with the smallest ``rlnEstimatedResolution`` (first on ties).
    project_dir
        Directory the ``rlnReferenceImage`` paths are relative to (RELION's working directory;
        default the current directory).

    Returns
    -------
    list of pathlib.Path
        One path with a selection flag, else every class in file order.

    Raises
    ------
    InputError
        No ``model_classes`` table, a missing column, or a class map that does not exist
        (named with its row and field).
    ValueError
        Both selection flags.
    """
    path = Path(model_star)
    if select_largest_class and select_highest_resol:
        raise ValueError("select either the largest class or the highest-resolution class, not both")
    blocks = read_star(path)
    table = blocks.get("model_classes")
    if table is None or not hasattr(table, "columns") or len(table) == 0:
        raise InputError(path, "no class table (data_model_classes) with rows in this STAR file")
    needed = ["rlnReferenceImage"]
    if select_largest_class:
        needed.append("rlnClassDistribution")
    if select_highest_resol:
        needed.append("rlnEstimatedResolution")
    for label in needed:
        if label not in table.columns:
            raise InputError(path, "column missing from data_model_classes", field=label)
    rows = list(range(len(table)))
    if select_largest_class:
        rows = [int(np.argmax(table["rlnClassDistribution"].to_numpy(dtype=np.float64)))]
    elif select_highest_resol:
        rows = [int(np.argmin(table["rlnEstimatedResolution"].to_numpy(dtype=np.float64)))]
    root = Path.cwd() if project_dir is None else Path(project_dir)
    out = []
    for i in rows:
        name = str(table["rlnReferenceImage"].iloc[i])
        p = _resolve(name, root)
        if not p.is_file():
            raise InputError(path, f"class map {name} not found (looked for {p})", row=i + 1, field="rlnReferenceImage")
        out.append(p)
    return out


def _is_model_star(path: Path) -> bool:
    return path.suffix.lower() == ".star"


def align_symmetry_file(
    path: str | os.PathLike,
    sym: str,
    *,
    project_dir: str | os.PathLike | None = None,
    select_largest_class: bool = False,
    select_highest_resol: bool = False,
    angpix: float = -1,
    progress: Report | None = None,
    **options: Any,
) -> AlignResult:
    """:func:`align_symmetry` on a map file or on the classes of a model.star.

    With a model.star and no selection flag every class is aligned and the one with the lowest
    diff2 is returned (RELION); in C1 a selection flag is then required.

    Parameters
    ----------
    path
        MRC map or ``run_itNNN_model.star``.
    sym
        Target point group.
    project_dir
        Directory the model.star's class paths are relative to (default: current directory).
    select_largest_class, select_highest_resol
        Class choice for a model.star input.
    angpix
        Pixel size (Å); ``<= 0``: from the map header.
    progress
        Called with a message at each stage.
    **options
        Keyword options of :func:`align_symmetry`.

    Returns
    -------
    AlignResult
        ``source`` names the map that was aligned.

    Raises
    ------
    InputError
        Missing or unreadable files (named).
    ValueError
        Unknown symmetry or inconsistent options.
    """
    path = Path(path)
    ops = point_group(sym)  # unknown name: ValueError before any file is read
    if _is_model_star(path):
        if _is_c1(ops) and not (select_largest_class or select_highest_resol):
            raise ValueError("in symmetry C1 a class must be selected by size (--select_largest_class) "
                             "or by resolution (--select_highest_resol)")
        sources = class_maps_from_model(path, select_largest_class=select_largest_class,
                                        select_highest_resol=select_highest_resol, project_dir=project_dir)
    else:
        sources = [path]
    best: AlignResult | None = None
    scores: dict[str, float] = {}
    for src in sources:
        _say(progress, f"reading {src}")
        vol, header_px = read_map(src, require_cube=True)
        px = float(angpix) if angpix is not None and angpix > 0 else float(header_px)
        result = align_symmetry(vol, sym, px, progress=progress, **options)
        result.source = src
        scores[str(src)] = result.score
        if len(sources) > 1:
            _say(progress, f"{src.name}: diff2 {result.score:.6g}")
        if best is None or result.score < best.score:  # first best kept on ties, as RELION
            best = result
    assert best is not None
    best.scores = scores
    return best


# ----------------------------------------------------------------------------------------------
# job and command line
# ----------------------------------------------------------------------------------------------


def _options(values: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`align_symmetry_file` keywords from job values (registry keys)."""
    return {
        "select_largest_class": bool(values["do_select_largest_class"]),
        "select_highest_resol": bool(values["do_select_highest_resol"]),
        "angpix": float(values["angpix"]),
        "box_size": int(values["box_size"]),
        "keep_centre": bool(values["do_keep_centre"]),
        "only_rot": bool(values["do_only_rot"]),
        "nr_uniform": int(values["nr_uniform"]),
        "maxres_A": float(values["maxres"]),
        "local_search_range": int(values["local_search_range"]),
        "local_search_step": float(values["local_search_step"]),
        "pad": int(values["pad"]),
        "apply_sym": bool(values["do_apply_sym"]),
    }


def _align_to_file(values: Mapping[str, Any], output: Path, project_dir: Path, report: Report) -> AlignResult:
    """Align the job's input and write the result to ``output`` (the only file written)."""
    name = str(values["fn_in"] or "")
    if not name:
        raise InputError(None, "no input map or model.star given", field="--i")
    sym = str(values["sym_name"])
    try:
        point_group(sym)
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from exc
    if values.get("do_nn"):
        report("nearest-neighbour interpolation (--NN) is not implemented; linear interpolation is used")
    src = _resolve(name, Path(project_dir))
    try:
        result = align_symmetry_file(src, sym, project_dir=project_dir, progress=report, **_options(values))
    except InputError:
        raise
    except ValueError as exc:  # option errors (flags, boxes): one clear message naming the input
        raise InputError(src, str(exc)) from exc
    write_map(output, asnumpy(result.volume), result.pixel_size_A)
    report(f"wrote {output} (rot {result.rot:.2f}, tilt {result.tilt:.2f}, psi {result.psi:.2f} deg; "
           f"{result.pixel_size_A:g} Å/px; {result.seconds:.1f} s)")
    return result


def run_align_symmetry_job(
    values: Mapping[str, Any],
    job_dir: Path,
    *,
    project_dir: Path,
    progress: Callable[[Any], None],
    client: Any = None,
) -> dict[str, Path]:
    """Job-registry run function of ``align_symmetry``: writes ``job_dir/aligned.mrc``.

    Parameters
    ----------
    values
        Complete job values (``fn_in`` relative to ``project_dir``; model.star class paths too).
    job_dir
        The job directory (the only place written).
    project_dir
        RELION project directory (working directory).
    progress
        Receives :class:`~subtomo_nb.jobs.progress.Progress` events.
    client
        Unused (the search runs in this process).

    Returns
    -------
    dict
        ``{"map": job_dir / "aligned.mrc"}``.
    """
    from subtomo_nb.jobs.progress import Progress
    from subtomo_nb.jobs.runners import preflight

    output = Path(job_dir) / OUTPUT_NAME
    preflight("align_symmetry", values, job_dir, project_dir, progress, [output])
    _align_to_file(values, output, Path(project_dir), lambda msg: progress(Progress(message=msg)))
    progress(Progress(message=f"wrote {output.name}", fraction=1.0))
    return {"map": output}


def run_from_args(args: argparse.Namespace) -> int:
    """Body of ``subtomo align-symmetry`` (parser: ``build_argparser("align_symmetry", sub)``).

    ``--o`` is the output map (``.mrc``/``.map``) or a directory that receives ``aligned.mrc``;
    paths are relative to the current directory, as RELION's.

    Returns
    -------
    int
        0 on success (bad input raises :class:`InputError`, which ``subtomo`` reports).
    """
    from subtomo_nb.jobs import values_from_args

    values = values_from_args("align_symmetry", args)
    out = Path(args.o if args.o else OUTPUT_NAME)
    if out.suffix.lower() not in (".mrc", ".map"):
        out = out / OUTPUT_NAME
    result = _align_to_file(values, out, Path.cwd(), lambda msg: print(msg, flush=True))
    print(f"aligned map: {out}")
    print(f"rot: {result.rot:.4f}\ntilt: {result.tilt:.4f}\npsi: {result.psi:.4f}")
    return 0
