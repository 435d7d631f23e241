"""Rotate a map onto RELION's symmetry axes: ``relion_align_symmetry`` (conventions §7.3).

A map with a point-group symmetry ``G`` in an arbitrary orientation (e.g. a C1 initial model)
is rotated so that its symmetry axes lie on RELION's conventional axes for ``G`` (§7.1: the
n-fold of ``Cn``/``Dn`` on z, the 2-fold of ``Dn`` on x, ...). As RELION:

1. (model.star input, :func:`subtomo_nb.tasks.align_symmetry.align_symmetry_file`) one class
   map is picked by size or resolution, or every class is tried and the one whose symmetry fits
   best is kept;
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

The map moves are in :mod:`~subtomo_nb.initial_model.map_geometry`, the search's orientations and
score in :mod:`~subtomo_nb.initial_model.symmetry_search`; the job and ``subtomo align-symmetry``
in :mod:`subtomo_nb.jobs.align_symmetry`.

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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from subtomo_nb._array import get_xp
from subtomo_nb.fourier.filters import fourier_crop
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.symmetry import point_group, symmetrise_map
from subtomo_nb.initial_model.map_geometry import rotate_map, translate_centre_of_mass_to_centre
from subtomo_nb.initial_model.symmetry_search import local_orientations, random_orientations, symmetry_scores

__all__ = ["AlignResult", "align_symmetry"]

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
