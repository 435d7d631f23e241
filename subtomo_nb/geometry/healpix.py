"""HEALPix orientational sampling as RELION's ``HealpixSampling`` (``src/healpix_sampling.cpp``).

* Directions (rot, tilt) are the centres of the HEALPix pixels in NEST order at
  ``nside = 2**order``: ``rot = phi`` wrapped to (-180, 180], ``tilt = acos(z)`` in [0, 180] (degrees).
* Symmetry-equivalent directions are removed in two passes (``removeSymmetryEquivalentPoints``):
  a geometric cut to RELION's asymmetric unit of the group, then -- if fewer than 4000 directions
  remain -- a greedy pass in pixel order that drops every direction lying within half the
  maximum pixel radius of a symmetry mate of an earlier kept one ("seams").
* In-plane angles: ``psi_step = 360 / (6 * 2**order)``, ``nr_psi = ceil(360 / psi_step)``,
  ``psi = i * 360 / nr_psi`` for ``i = 0 .. nr_psi-1``.
* Adaptive oversampling (``getOrientations``/``pushbackOversampledPsiAngles``): a coarse direction
  becomes its ``4**o`` NEST child pixels at ``order + o``; a coarse psi becomes ``2**o`` angles
  ``psi - step/2 + (k + 1/2) step / 2**o``.
* Local searches (``selectOrientationsWithNonZeroPriorProbability``): Gaussian priors on the
  direction (angle between direction vectors, or tilt only, or rot only) and on psi, cut at
  ``sigma_cutoff`` (3) sigma, each normalised to sum 1.

All angles are in degrees. The random perturbation RELION adds to the grid each iteration is not
applied here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import healpy as hp
import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from .euler import euler_to_matrix
from .symmetry import group_type, symmetry_pairs

__all__ = [
    "angular_step",
    "psi_step",
    "healpix_directions",
    "direction_vectors",
    "psi_angles",
    "remove_symmetry_equivalent",
    "sampling_directions",
    "orientation_grid",
    "oversampled_directions",
    "oversampled_psi",
    "oversampled_children",
    "LocalOrientations",
    "local_orientations",
]

_PI = np.pi
_SEAM_LIMIT = 4000  # RELION only corrects the seams for fewer directions than this


def angular_step(order: int, oversampling: int = 0) -> float:
    """Angular sampling step in degrees: ``360 / (6 * 2**(order + oversampling))``.

    Order 2 gives 15 degrees, and 7.5 degrees with ``oversampling=1``.
    """
    return 360.0 / (6 * round(2.0 ** (int(order) + int(oversampling))))


def psi_step(order: int) -> float:
    """RELION's effective psi step (degrees) for 3D sampling at ``order``: 360 / nr_psi."""
    nominal = 360.0 / (6 * round(2.0 ** int(order)))
    return 360.0 / int(np.ceil(360.0 / nominal))


def _nside(order: int) -> int:
    order = int(order)
    if order < 0 or order > 29:
        raise ValueError(f"HEALPix order must be in 0..29, got {order}")
    return 1 << order


def _pixel_angles(order: int, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) of NEST pixel centres as RELION's ``getDirectionFromHealPix``."""
    nside = _nside(order)
    pixels = np.asarray(pixels, dtype=np.int64)
    _, phi = hp.pix2ang(nside, pixels, nest=True)
    z = hp.pix2vec(nside, pixels, nest=True)[2]
    rot = np.asarray(phi, dtype=np.float64) * 180.0 / _PI
    tilt = np.arccos(np.clip(np.asarray(z, dtype=np.float64), -1.0, 1.0)) * 180.0 / _PI
    # checkDirection: rot into [-180, 180]
    rot = np.where(rot > 180.0, rot - 360.0, rot)
    return rot, tilt


def healpix_directions(order: int) -> tuple[np.ndarray, np.ndarray]:
    """All HEALPix directions at ``order`` (before symmetry reduction).

    Parameters
    ----------
    order
        HEALPix order ``n`` (nside ``2**n``, ``12 * 4**n`` pixels).

    Returns
    -------
    rot, tilt : numpy.ndarray
        Degrees, ``(12 * 4**n,)`` in NEST pixel order; rot in [-180, 180], tilt in [0, 180].
    """
    npix = 12 * 4 ** int(order)
    return _pixel_angles(order, np.arange(npix))


def direction_vectors(rot: ArrayLike, tilt: ArrayLike) -> np.ndarray:
    """Unit projection directions ``(sin t cos r, sin t sin r, cos t)`` (``Euler_angles2direction``).

    Parameters
    ----------
    rot, tilt
        Degrees, broadcastable.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` (x, y, z) in the reference frame.
    """
    r = np.asarray(rot, dtype=np.float64) * _PI / 180.0
    t = np.asarray(tilt, dtype=np.float64) * _PI / 180.0
    r, t = np.broadcast_arrays(r, t)
    st = np.sin(t)
    return np.stack([st * np.cos(r), st * np.sin(r), np.cos(t)], axis=-1)


def _direction_angles(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) in degrees of unit vectors (``Euler_direction2angles``)."""
    tilt = np.degrees(np.arccos(np.clip(v[..., 2], -1.0, 1.0)))
    rot = np.degrees(np.arctan2(v[..., 1], v[..., 0]))
    return rot, tilt


def psi_angles(order: int, step: float | None = None) -> np.ndarray:
    """In-plane angles of the coarse grid (degrees, in [0, 360)).

    Parameters
    ----------
    order
        HEALPix order; the default step is ``360 / (6 * 2**order)``.
    step
        Requested psi step (RELION's ``--psi_step``), degrees; adjusted so that it divides 360.

    Returns
    -------
    numpy.ndarray
        ``i * 360 / nr_psi`` with ``nr_psi = ceil(360 / step)``.
    """
    if step is None or step <= 0:
        step = 360.0 / (6 * round(2.0 ** int(order)))
    nr_psi = int(np.ceil(360.0 / step))
    return np.arange(nr_psi) * (360.0 / nr_psi)


def _asymmetric_unit_mask(rot: np.ndarray, tilt: np.ndarray, v: np.ndarray, kind: str, n: int) -> np.ndarray:
    """RELION's geometric asymmetric-unit cut (``removeSymmetryEquivalentPointsGeometric``)."""

    def unit(*c: float) -> np.ndarray:
        a = np.asarray(c, dtype=np.float64)
        return a / np.linalg.norm(a)

    def half_spaces(*normals: np.ndarray, sign: float = 1.0) -> np.ndarray:
        ok = np.ones(len(v), dtype=bool)
        for nrm in normals:
            d = v @ nrm
            ok &= (d >= 0) if sign > 0 else (d <= 0)
        return ok

    up = tilt <= 90.0
    if kind == "CN":
        return (rot >= -180.0 / n) & (rot <= 180.0 / n)
    if kind in ("CI", "CS"):
        return up
    if kind == "CNV":
        return (rot >= 0.0 / n) & (rot <= 180.0 / n)
    if kind == "CNH":
        return (rot >= -180.0 / n) & (rot <= 180.0 / n) & up
    if kind == "SN":
        return (rot >= -180.0 * 2.0 / n) & (rot <= 180.0 * 2.0 / n) & up
    if kind == "DN":
        if n == 1:
            return up
        return (rot >= -180.0 / n + 90.0) & (rot <= 180.0 / n + 90.0) & up
    if kind in ("DNV", "DNH"):
        return (rot >= 90.0) & (rot <= 180.0 / n + 90.0) & up
    if kind == "T":
        pre = ((rot >= 90.0) & (rot <= 150.0)) | (rot == 0)
        return pre & half_spaces(unit(-0.942809, 0.0, 0.0), unit(0.471405, 0.272165, 0.7698),
                                 unit(0.471404, 0.816497, 0.0))
    if kind == "TD":
        return half_spaces(unit(-0.942809, 0.0, 0.0), unit(0.471405, 0.272165, 0.7698),
                           unit(0.0, 0.471405, -0.666667))
    if kind == "TH":
        return half_spaces(unit(-0.816496, 0.0, 0.0), unit(0.707107, 0.408248, -0.57735),
                           unit(-0.408248, -0.707107, 0.0))
    if kind in ("O", "OH"):
        if kind == "O":
            pre = ((rot >= 45.0) & (rot <= 135.0) & up) | (rot == 0.0)
        else:
            pre = (rot >= 90.0) & (rot <= 135.0) & up
        return pre & half_spaces(unit(0.0, -1.0, 1.0), unit(1.0, 1.0, 0.0), unit(-1.0, 1.0, 0.0))

    # icosahedral groups
    a5 = (0.4999999839058737, 0.8090170074556163, 0.3090169861701543)
    b4 = (0.187592467856686, 0.303530987314591, 0.491123477863004)
    if kind in ("I1", "I1H"):
        A = euler_to_matrix(0.0, 90.0, 0.0)
    elif kind in ("I3", "I3H"):
        A = euler_to_matrix(0.0, 31.7174745559, 0.0)
    elif kind in ("I4", "I4H"):
        A = euler_to_matrix(0.0, -31.7174745559, 0.0)
    else:
        A = np.eye(3)

    def av(*c: float) -> np.ndarray:
        return unit(*(A @ np.asarray(c, dtype=np.float64)))

    if kind in ("I", "I2", "I1", "I3"):
        return half_spaces(av(0.0, 1.0, 0.0), av(-a5[0], -a5[1], a5[2]), av(a5[0], -a5[1], a5[2]))
    if kind == "I4":
        return half_spaces(av(b4[0], -b4[1], -b4[2]), av(b4[0], b4[1], -b4[2]), av(0.0, 0.0, 1.0), sign=-1.0)
    if kind in ("IH", "I2H", "I1H"):
        return half_spaces(av(0.0, 1.0, 0.0), av(-a5[0], -a5[1], a5[2]), av(1.0, 0.0, 0.0))
    if kind == "I3H":
        return half_spaces(av(b4[0], -b4[1], -b4[2]), av(b4[0], b4[1], -b4[2]), av(0.0, 0.0, 1.0)) & (
            v @ unit(0.0, 1.0, 0.0) >= 0
        )
    if kind == "I4H":
        return half_spaces(av(b4[0], -b4[1], -b4[2]), av(b4[0], b4[1], -b4[2]), av(0.0, 0.0, 1.0), sign=-1.0) & (
            v @ unit(0.0, 1.0, 0.0) >= 0
        )
    raise ValueError(f"no asymmetric unit for symmetry kind {kind!r}")  # pragma: no cover


def _seam_keep(v: np.ndarray, L: np.ndarray, R: np.ndarray, cos_max: float) -> np.ndarray:
    """Greedy seam removal: keep i unless a symmetry mate of an earlier kept k is within max_ang."""
    n = len(v)
    keep = np.ones(n, dtype=bool)
    if n == 0:
        return keep
    tree = cKDTree(v)
    radius = np.sqrt(max(2.0 - 2.0 * cos_max, 0.0)) * (1.0 + 1e-9) + 1e-12
    conflicts: dict[int, list[int]] = {}
    for Lj, Rj in zip(L, R):
        w = v @ Rj @ Lj.T  # rows: L_j R_j^T v_k
        hits = tree.query_ball_point(w, radius)
        for k, lst in enumerate(hits):
            for i in lst:
                if i > k and float(w[k] @ v[i]) > cos_max:
                    conflicts.setdefault(i, []).append(k)
    for i in sorted(conflicts):
        if any(keep[k] for k in conflicts[i]):
            keep[i] = False
    return keep


def remove_symmetry_equivalent(
    rot: ArrayLike, tilt: ArrayLike, sym: str, order: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the directions RELION keeps in the asymmetric unit of ``sym``.

    Parameters
    ----------
    rot, tilt
        Directions in degrees, in HEALPix NEST pixel order (as :func:`healpix_directions`).
    sym
        Point-group symbol.
    order
        HEALPix order of the directions (sets the seam tolerance, half the maximum pixel
        radius); inferred from ``len(rot) == 12 * 4**order`` when omitted.

    Returns
    -------
    rot, tilt : numpy.ndarray
        Kept directions (degrees), in input order.
    index : numpy.ndarray
        Their indices in the input (the NEST pixel numbers for a full HEALPix list).
    """
    rot = np.asarray(rot, dtype=np.float64).ravel()
    tilt = np.asarray(tilt, dtype=np.float64).ravel()
    if order is None:
        npix = len(rot)
        order = int(round(np.log(max(npix, 1) / 12.0) / np.log(4.0))) if npix >= 12 else -1
        if order < 0 or 12 * 4**order != npix:
            raise ValueError("remove_symmetry_equivalent: give `order` for a list that is not a full HEALPix grid")
    kind, n = group_type(sym)
    v = direction_vectors(rot, tilt)
    idx = np.nonzero(_asymmetric_unit_mask(rot, tilt, v, kind, n))[0]
    if len(idx) < _SEAM_LIMIT:
        max_ang = 0.5 * hp.max_pixrad(_nside(order)) * 180.0 / _PI
        L, R = symmetry_pairs(sym)
        keep = _seam_keep(v[idx], L, R, np.cos(max_ang * _PI / 180.0))
        idx = idx[keep]
    return rot[idx], tilt[idx], idx


@lru_cache(maxsize=32)
def _sampling_directions_cached(order: int, sym: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rot, tilt = healpix_directions(order)
    return remove_symmetry_equivalent(rot, tilt, sym, order)


def sampling_directions(order: int, sym: str = "C1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RELION's coarse directions at ``order`` for symmetry ``sym`` (``setOrientations``).

    Parameters
    ----------
    order
        HEALPix order.
    sym
        Point-group symbol; its asymmetric unit is kept (:func:`remove_symmetry_equivalent`).

    Returns
    -------
    rot, tilt : numpy.ndarray
        Degrees, in the order RELION lists them (``_sampling.star``, ``sampling_directions``).
    pixel : numpy.ndarray
        NEST pixel number of each direction (for :func:`oversampled_directions`).
    """
    group_type(sym)  # validate the symbol before caching
    r, t, p = _sampling_directions_cached(int(order), sym.strip().upper())
    return r.copy(), t.copy(), p.copy()


def orientation_grid(order: int, sym: str = "C1", step: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All coarse orientations: every kept direction combined with every psi.

    Parameters
    ----------
    order
        HEALPix order.
    sym
        Point-group symbol.
    step
        Psi step (degrees); default RELION's for ``order``.

    Returns
    -------
    rot, tilt, psi : numpy.ndarray
        Degrees, each ``(n_dir * n_psi,)``, direction-major (index ``idir * n_psi + ipsi``, as
        RELION's ``getPositionSamplingPoint``).
    """
    rot, tilt, _ = sampling_directions(order, sym)
    psi = psi_angles(order, step)
    nd, npsi = len(rot), len(psi)
    return np.repeat(rot, npsi), np.repeat(tilt, npsi), np.tile(psi, nd)


def oversampled_directions(pixel: ArrayLike, order: int, oversampling: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Fine directions of coarse HEALPix pixels: their NEST children at ``order + oversampling``.

    Parameters
    ----------
    pixel
        Coarse NEST pixel numbers at ``order`` (any shape).
    order
        Coarse HEALPix order.
    oversampling
        Adaptive oversampling order ``o`` (RELION's ``--oversampling``).

    Returns
    -------
    rot, tilt : numpy.ndarray
        Degrees, shape ``pixel.shape + (4**o,)``, children in RELION's order (``y`` outer,
        ``x`` inner within the face; for ``o = 1`` the NEST pixels ``4p .. 4p+3``).
    """
    pixel = np.asarray(pixel, dtype=np.int64)
    o = int(oversampling)
    if o == 0:
        r, t = _pixel_angles(order, pixel)
        return r[..., None], t[..., None]
    fact = 1 << o
    x, y, f = hp.pix2xyf(_nside(order), pixel, nest=True)
    dj, di = np.meshgrid(np.arange(fact), np.arange(fact), indexing="ij")  # j (y) outer, i (x) inner
    xi = fact * np.asarray(x)[..., None] + di.ravel()
    yj = fact * np.asarray(y)[..., None] + dj.ravel()
    ff = np.broadcast_to(np.asarray(f)[..., None], xi.shape)
    fine = hp.xyf2pix(_nside(order + o), xi, yj, ff, nest=True)
    return _pixel_angles(order + o, np.asarray(fine))


def oversampled_psi(psi: ArrayLike, step: float, oversampling: int = 1) -> np.ndarray:
    """Fine psi angles of coarse psi samples: ``psi - step/2 + (k + 1/2) step / 2**o``.

    Parameters
    ----------
    psi
        Coarse psi angles (degrees, any shape).
    step
        Coarse psi step (degrees), e.g. :func:`psi_step`.
    oversampling
        Oversampling order ``o``.

    Returns
    -------
    numpy.ndarray
        Shape ``psi.shape + (2**o,)`` (for ``o = 1``: ``psi -/+ step/4``).
    """
    n = 1 << int(oversampling)
    psi = np.asarray(psi, dtype=np.float64)
    k = np.arange(n)
    return psi[..., None] - 0.5 * step + (0.5 + k) * step / n


def oversampled_children(
    pixel: ArrayLike, psi: ArrayLike, order: int, oversampling: int = 1, step: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine orientations of coarse (direction, psi) samples, as RELION's ``getOrientations``.

    Parameters
    ----------
    pixel
        Coarse NEST pixel numbers at ``order``; broadcast against ``psi``.
    psi
        Coarse psi angles (degrees).
    order
        Coarse HEALPix order.
    oversampling
        Oversampling order ``o`` (1: 4 directions x 2 psi = 8 children).
    step
        Coarse psi step (degrees); default :func:`psi_step` of ``order``.

    Returns
    -------
    rot, tilt, psi : numpy.ndarray
        Degrees, shape ``broadcast(pixel, psi).shape + (4**o * 2**o,)``; direction children
        outer, psi children inner (RELION's ``iover_rot`` order).
    """
    if step is None:
        step = psi_step(order)
    pixel, psi = np.broadcast_arrays(np.asarray(pixel, dtype=np.int64), np.asarray(psi, dtype=np.float64))
    r, t = oversampled_directions(pixel, order, oversampling)  # (..., nd)
    p = oversampled_psi(psi, step, oversampling)  # (..., np)
    nd, npsi = r.shape[-1], p.shape[-1]
    shape = pixel.shape + (nd * npsi,)
    rot = np.repeat(r, npsi, axis=-1).reshape(shape)
    tilt = np.repeat(t, npsi, axis=-1).reshape(shape)
    psis = np.tile(p, (1,) * pixel.ndim + (nd,)).reshape(shape)
    return rot, tilt, psis


class LocalOrientations(NamedTuple):
    """Orientations of a local search with their prior weights (all angles in degrees).

    ``rot``, ``tilt``, ``psi``, ``weight`` have one entry per orientation (selected directions x
    selected psi, direction-major); ``weight = direction_prior[d] * psi_prior[p]`` sums to 1.
    ``direction_index`` indexes :func:`sampling_directions` (``pixel`` is its NEST pixel) and
    ``psi_index`` indexes :func:`psi_angles`, per orientation. ``direction_prior`` and
    ``psi_prior`` are the separately normalised priors of the selected directions / psi values,
    with ``selected_directions`` / ``selected_psi`` their indices.
    """

    rot: np.ndarray
    tilt: np.ndarray
    psi: np.ndarray
    weight: np.ndarray
    direction_index: np.ndarray
    psi_index: np.ndarray
    pixel: np.ndarray
    selected_directions: np.ndarray
    direction_prior: np.ndarray
    selected_psi: np.ndarray
    psi_prior: np.ndarray


def _gauss(d: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * (d / sigma) ** 2) / (np.sqrt(2.0 * _PI) * sigma)


def _wrap180(d: np.ndarray) -> np.ndarray:
    """|angle difference| folded into [0, 180]."""
    return np.abs((np.asarray(d, dtype=np.float64) + 180.0) % 360.0 - 180.0)


def local_orientations(
    prior_rot: float,
    prior_tilt: float,
    prior_psi: float,
    sigma_rot: float,
    sigma_tilt: float,
    sigma_psi: float,
    order: int,
    sym: str = "C1",
    *,
    sigma_cutoff: float = 3.0,
    step: float | None = None,
) -> LocalOrientations:
    """Orientations with non-zero prior and their Gaussian weights (local angular searches).

    RELION's ``selectOrientationsWithNonZeroPriorProbability`` on the coarse grid of ``order``:

    * ``sigma_rot > 0`` and ``sigma_tilt > 0``: angle between the direction vector of each kept
      direction -- using its symmetry mate closest to the prior -- and the prior direction;
      kept if below ``sigma_cutoff * max(sigma_rot, sigma_tilt)``, weight Gaussian in it.
    * only ``sigma_tilt > 0`` (``--sigma_tilt``): ``|tilt - prior_tilt|`` minimised over the
      symmetry mates, Gaussian in ``sigma_tilt``.
    * only ``sigma_rot > 0``: ``|asin|`` of the direction's component perpendicular to the prior
      rot (RELION's ``calculateDeltaRot``), minimised over mates.
    * neither: every direction, equal weights.
    * psi: wrapped ``|psi - prior_psi|`` below ``sigma_cutoff * sigma_psi``, Gaussian weight;
      ``sigma_psi = 0``: every psi, equal weights.

    Direction and psi priors are each normalised to sum 1; if nothing survives a cut, the single
    nearest sample is used with weight 1 (in the rot-only/tilt-only modes RELION ranks that
    fallback by the last symmetry mate's difference; the minimum over mates is used here).

    Parameters
    ----------
    prior_rot, prior_tilt, prior_psi
        Prior centre (degrees).
    sigma_rot, sigma_tilt, sigma_psi
        Prior widths (degrees); 0 means no prior on that angle.
    order
        HEALPix order of the coarse grid.
    sym
        Point-group symbol (the directions are those of its asymmetric unit).
    sigma_cutoff
        Cut-off in units of sigma (RELION: 3).
    step
        Psi step (degrees); default RELION's for ``order``.

    Returns
    -------
    LocalOrientations
    """
    rot, tilt, pixel = sampling_directions(order, sym)
    psis = psi_angles(order, step)
    L, R = symmetry_pairs(sym)
    v = direction_vectors(rot, tilt)  # (N, 3)
    mates = np.einsum("jab,jcb,nc->jna", L, R, v)  # L_j R_j^T v_n : (J, N, 3)

    if sigma_rot > 0 and sigma_tilt > 0:
        p = direction_vectors(prior_rot, prior_tilt)
        best = (mates @ p).max(axis=0)
        diff = np.degrees(np.arccos(np.clip(best, -1.0, 1.0)))
        sig = max(sigma_rot, sigma_tilt)
    elif sigma_rot > 0:
        c, s = np.cos(np.radians(prior_rot)), np.sin(np.radians(prior_rot))
        yprime = -s * mates[..., 0] + c * mates[..., 1]
        diff = np.abs(np.degrees(np.arcsin(np.clip(yprime, -1.0, 1.0)))).min(axis=0)
        sig = sigma_rot
    elif sigma_tilt > 0:
        _, mate_tilt = _direction_angles(mates)
        diff = _wrap180(mate_tilt - prior_tilt).min(axis=0)
        sig = sigma_tilt
    else:
        diff, sig = None, 0.0

    if diff is None:
        sel_dir = np.arange(len(rot))
        dir_prior = np.full(len(rot), 1.0 / len(rot))
    else:
        sel_dir = np.nonzero(diff < sigma_cutoff * sig)[0]
        if len(sel_dir):
            w = _gauss(diff[sel_dir], sig)
            dir_prior = w / w.sum()
        else:
            sel_dir = np.array([int(np.argmin(diff))])
            dir_prior = np.ones(1)

    if sigma_psi > 0:
        dpsi = _wrap180(psis - prior_psi)
        sel_psi = np.nonzero(dpsi < sigma_cutoff * sigma_psi)[0]
        if len(sel_psi):
            w = _gauss(dpsi[sel_psi], sigma_psi)
            psi_prior = w / w.sum()
        else:
            sel_psi = np.array([int(np.argmin(dpsi))])
            psi_prior = np.ones(1)
    else:
        sel_psi = np.arange(len(psis))
        psi_prior = np.full(len(psis), 1.0 / len(psis))

    nd, npsi = len(sel_dir), len(sel_psi)
    d_idx = np.repeat(sel_dir, npsi)
    p_idx = np.tile(sel_psi, nd)
    weight = (dir_prior[:, None] * psi_prior[None, :]).ravel()
    return LocalOrientations(
        rot=rot[d_idx],
        tilt=tilt[d_idx],
        psi=psis[p_idx],
        weight=weight,
        direction_index=d_idx,
        psi_index=p_idx,
        pixel=pixel[d_idx],
        selected_directions=sel_dir,
        direction_prior=dir_prior,
        selected_psi=sel_psi,
        psi_prior=psi_prior,
    )
