"""Compare a map with a reference after the best superposition (rotation, translation, hand).

A de novo map comes out in an arbitrary orientation, position and hand. :func:`superpose` finds
the rigid motion (and, optionally, the mirror) that brings it best onto a reference and returns
the FSC of the superposed map against the reference:

1. **global search**: every orientation of a HEALPix grid (default order 2: 15° directions ×
   15° psi, 4608 orientations); each rotated transform (:meth:`Projector.rotate3d`, padding 2)
   is cross-correlated with the reference over all translations by one inverse FFT, both maps
   low-passed to ``lowpass_A``;
2. **local refinement** of the best few by Powell's method over the three Euler angles and the
   three shift components, maximising the band-limited normalised correlation evaluated in
   Fourier space (continuous in all six parameters: trilinear Fourier interpolation, phase
   shifts);
3. the same for the mirrored map (``V(x, y, -z)``) when ``try_mirror``; the hand with the higher
   correlation wins.

The superposed map is ``V_out(r) = V(A.T (r - t))`` (``A`` RELION's matrix of the Euler angles,
``t`` the shift in pixels), i.e. a point ``u`` of the input lands on ``A u + t``: an axis ``u`` of
the input points along ``A u`` on the reference (:func:`axis_error_deg`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize

from subtomo_nb.fourier.fft import irfft3, rfft3, shift_half
from subtomo_nb.fourier.fsc import fsc as fsc_curve
from subtomo_nb.fourier.fsc import resolution
from subtomo_nb.fourier.grid import freq_grid, half_points
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.healpix import orientation_grid

__all__ = ["Superposition", "axis_error_deg", "mirror", "reference_from_poses", "superpose"]

#: Orientations rotated per batch in the global search (bounds memory).
CHUNK = 96


@dataclass
class Superposition:
    """Result of :func:`superpose`.

    Attributes
    ----------
    aligned : (N, N, N) the superposed map (mirrored first when ``mirrored``).
    fsc : (N//2+1,) FSC of ``aligned`` against the reference (with ``mask`` if given).
    resolution_05_A, resolution_0143_A : resolution (Å) where the FSC drops below 0.5 / 0.143.
    angles : (rot, tilt, psi) degrees; ``matrix`` the rotation ``A``, acting on the map after
        mirroring when ``mirrored`` (mirroring the input again undoes it: ``mirror`` is an involution).
    shift_px : (x, y, z) pixels.
    mirrored : True when the mirrored map (the other hand) fitted better.
    correlation : band-limited normalised correlation at the optimum.
    correlation_other_hand : the same for the other hand (nan without ``try_mirror``).
    """

    aligned: np.ndarray
    fsc: np.ndarray
    resolution_05_A: float
    resolution_0143_A: float
    angles: tuple[float, float, float]
    shift_px: tuple[float, float, float]
    mirrored: bool
    correlation: float
    correlation_other_hand: float

    @property
    def matrix(self) -> np.ndarray:
        """RELION rotation matrix of :attr:`angles`."""
        return euler_to_matrix(*self.angles)

    @property
    def hand(self) -> str:
        """``"same"`` or ``"mirrored"``."""
        return "mirrored" if self.mirrored else "same"


def mirror(volume: np.ndarray) -> np.ndarray:
    """The other hand: ``V(x, y, -z)`` about the box centre ``N // 2`` (even boxes)."""
    v = np.asarray(volume)
    n = v.shape[0]
    idx = (2 * (n // 2) - np.arange(n)) % n  # z -> -z about the centre voxel (the edge slice maps to itself)
    return v[idx]


def _band(box: int, pixel_size_A: float, lowpass_A: float | None) -> np.ndarray:
    """Weights of the half transform within the band ``0 < |k| <= box pix / lowpass`` (Friedel-doubled)."""
    kx, ky, kz = freq_grid(box, 3)
    r = np.sqrt(kx * kx + ky * ky + kz * kz + 0.0)
    rmax = box / 2 if not lowpass_A else min(box * pixel_size_A / lowpass_A, box / 2)
    w = ((r > 0) & (r <= rmax)).astype(np.float64)
    w = w * np.where(kx > 0, 2.0, 1.0)  # the half transform stores one of each Friedel pair for kx > 0
    return np.broadcast_to(w, (box, box, box // 2 + 1))


def _global_search(proj: Projector, F_ref: np.ndarray, band: np.ndarray, order: int,
                   max_shift_px: float, n_best: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Best ``n_best`` (angles, integer shift) by FFT cross-correlation over a HEALPix grid."""
    n = F_ref.shape[0]
    rot, tilt, psi = orientation_grid(order, "C1")
    A = euler_to_matrix(rot, tilt, psi)
    c = np.arange(n) - n // 2
    dist = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    allowed = dist <= max_shift_px
    Fb = F_ref * (band > 0)
    pts = half_points(n, 3)
    scores = np.empty(len(A))
    shifts = np.empty((len(A), 3))
    for s in range(0, len(A), CHUNK):
        Fr = proj.sample(A[s:s + CHUNK], pts)                        # (B, N, N, N//2+1)
        cc = irfft3(Fb[None] * np.conj(Fr), n)                       # correlation over shifts t
        cc = np.where(allowed[None], cc, -np.inf)
        flat = cc.reshape(len(Fr), -1)
        best = np.argmax(flat, axis=1)
        scores[s:s + CHUNK] = flat[np.arange(len(Fr)), best]
        z, y, x = np.unravel_index(best, (n, n, n))
        shifts[s:s + CHUNK] = np.stack([x - n // 2, y - n // 2, z - n // 2], axis=1)
    order_idx = np.argsort(-scores)
    picked: list[tuple[np.ndarray, np.ndarray]] = []
    for i in order_idx:
        # distinct candidates: more than 20° from the ones already kept
        if all(np.degrees(np.arccos(np.clip((np.trace(A[i] @ euler_to_matrix(*p).T) - 1) / 2, -1, 1))) > 20
               for p, _ in picked):
            picked.append((np.array([rot[i], tilt[i], psi[i]]), shifts[i]))
        if len(picked) >= n_best:
            break
    return picked


def _correlation(proj: Projector, F_ref: np.ndarray, band: np.ndarray, pts: np.ndarray, params: np.ndarray,
                 ref_norm: float) -> float:
    """Band-limited normalised correlation of the reference with ``V(A.T (r - t))``."""
    n = F_ref.shape[0]
    A = euler_to_matrix(*params[:3])
    Fr = shift_half(proj.sample(A, pts), params[3:6], n)
    num = float(np.sum(band * (F_ref * np.conj(Fr)).real))
    den = float(np.sqrt(np.sum(band * np.abs(Fr) ** 2))) * ref_norm
    return num / den if den > 0 else 0.0


def _best_fit(volume: np.ndarray, F_ref: np.ndarray, band: np.ndarray, order: int, max_shift_px: float,
              n_candidates: int) -> tuple[np.ndarray, float]:
    proj = Projector(np.asarray(volume, dtype=np.float64), pad=2)
    pts = half_points(F_ref.shape[0], 3)
    ref_norm = float(np.sqrt(np.sum(band * np.abs(F_ref) ** 2)))
    best_p, best_c = None, -np.inf
    for angles, shift in _global_search(proj, F_ref, band, order, max_shift_px, n_candidates):
        x0 = np.concatenate([angles, shift])
        res = optimize.minimize(lambda p: -_correlation(proj, F_ref, band, pts, p, ref_norm), x0, method="Powell",
                                options={"xtol": 1e-3, "ftol": 1e-7, "maxfev": 3000})
        if -res.fun > best_c:
            best_p, best_c = res.x, -float(res.fun)
    assert best_p is not None
    return best_p, best_c


def superpose(volume: np.ndarray, reference: np.ndarray, pixel_size_A: float, *, lowpass_A: float | None = 20.0,
              mask: np.ndarray | None = None, try_mirror: bool = True, healpix_order: int = 2,
              max_shift_px: float | None = None, n_candidates: int = 3) -> Superposition:
    """Superpose ``volume`` onto ``reference`` (rotation, translation, optionally hand) and compare them.

    Parameters
    ----------
    volume, reference
        Real cubic maps of the same (even) box and pixel size.
    pixel_size_A
        Pixel size (Å).
    lowpass_A
        Resolution (Å) the search uses (None: Nyquist); the FSC is computed at all resolutions.
    mask
        Real-space mask for the FSC (e.g. the reference's solvent mask); None: unmasked.
    try_mirror
        Also superpose the mirrored map and keep the hand that fits better.
    healpix_order
        Order of the global orientation grid (2: 15°).
    max_shift_px
        Largest translation searched (default a quarter of the box).
    n_candidates
        Distinct global-search optima refined locally.

    Returns
    -------
    Superposition
    """
    vol = np.asarray(volume, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if vol.shape != ref.shape or vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"need two cubic maps of one shape, got {vol.shape} and {ref.shape}")
    n = vol.shape[0]
    max_shift_px = n / 4 if max_shift_px is None else float(max_shift_px)
    band = _band(n, pixel_size_A, lowpass_A)
    F_ref = rfft3(ref)
    hands = [(False, vol)] + ([(True, mirror(vol))] if try_mirror else [])
    fits = [(m, v, *_best_fit(v, F_ref, band, healpix_order, max_shift_px, n_candidates)) for m, v in hands]
    fits.sort(key=lambda f: -f[3])
    mirrored, v, p, c = fits[0]
    other = fits[1][3] if len(fits) > 1 else float("nan")
    proj = Projector(v, pad=2)
    F = shift_half(proj.rotate3d(euler_to_matrix(*p[:3])), p[3:6], n)
    aligned = irfft3(F, n)
    f = np.asarray(fsc_curve(aligned, ref, mask))
    return Superposition(aligned=aligned, fsc=f, resolution_05_A=resolution(f, n, pixel_size_A, 0.5),
                         resolution_0143_A=resolution(f, n, pixel_size_A, 0.143),
                         angles=(float(p[0]), float(p[1]), float(p[2])),
                         shift_px=(float(p[3]), float(p[4]), float(p[5])), mirrored=bool(mirrored),
                         correlation=float(c), correlation_other_hand=float(other))


def axis_error_deg(matrix: np.ndarray, axis: tuple[float, float, float] = (0.0, 0.0, 1.0),
                   reference_axis: tuple[float, float, float] | None = None, polar: bool = False) -> float:
    """Angle (degrees) between ``matrix @ axis`` and ``reference_axis`` (default the same axis).

    With ``polar=False`` the sign of the axis does not matter (``min`` over ``±``). Used with a
    :class:`Superposition`'s matrix: the symmetry axis that ``relion_align_symmetry`` put on z
    should land on the reference's z.
    """
    a = np.asarray(matrix, float) @ np.asarray(axis, float)
    b = np.asarray(axis if reference_axis is None else reference_axis, float)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    if not polar:
        cos = abs(cos)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def symmetry_axes_error_deg(matrix: np.ndarray, sym: str) -> float:
    """Largest angle (degrees) between the point group's rotation axes carried by ``matrix`` and the truth's.

    Each axis of a non-identity operator of ``sym`` (:func:`~subtomo_nb.geometry.symmetry.point_group`),
    mapped by ``matrix`` (a :class:`Superposition`'s: the aligned map onto the truth), is compared
    with the nearest axis of the same fold in the truth's frame (sign ignored); the worst of these.
    For ``C6`` this is :func:`axis_error_deg` of z; for ``D2`` the three 2-folds, which may land on
    one another's place (the group does not name them).
    """
    from subtomo_nb.geometry.symmetry import point_group

    axes, folds = [], []
    for op in point_group(sym):
        angle = np.degrees(np.arccos(np.clip((np.trace(op) - 1.0) / 2.0, -1.0, 1.0)))
        if angle < 1e-3 or np.linalg.det(op) < 0:
            continue
        w, v = np.linalg.eig(op)
        axes.append(np.real(v[:, int(np.argmin(np.abs(w - 1.0)))]))
        folds.append(round(360.0 / angle))
    if not axes:
        return 0.0
    M = np.asarray(matrix, float)
    worst = 0.0
    for a, k in zip(axes, folds):
        best = min(axis_error_deg(M, axis=tuple(a), reference_axis=tuple(b))
                   for b, kb in zip(axes, folds) if kb == k)
        worst = max(worst, best)
    return worst


def reference_from_poses(particles: str | os.PathLike, poses: str | os.PathLike, out_map: str | os.PathLike, *,
                         sym: str = "C1", tomograms: str | os.PathLike | None = None, pad: int = 2) -> np.ndarray:
    """The best map the particles can give: their reconstruction with known poses (e.g. the truth).

    The particle table of ``particles`` (a particle STAR file or an optimisation set) gets the
    ``rlnAngle*`` and ``rlnOrigin*Angst`` of ``poses`` (matched by ``rlnTomoParticleName``), is
    written beside ``out_map`` (``<stem>_particles.star``) and reconstructed into ``out_map``
    (CTF-corrected, ``sym`` applied). Useful where the simulated truth map is not what the boxes
    hold (e.g. lattice neighbours inside the box).

    Returns
    -------
    The reconstructed map.
    """
    from subtomo_nb.io.particles import ParticleSet, write_particles
    from subtomo_nb.io.star import read_star
    from subtomo_nb.tasks.particle_data import load_particle_set
    from subtomo_nb.tasks.reconstruct import reconstruct_particles

    pset, _ = load_particle_set(particles, tomograms)
    truth = read_star(poses)["particles"].set_index("rlnTomoParticleName")
    tab = pset.particles.copy()
    names = tab["rlnTomoParticleName"].astype(str)
    missing = ~names.isin(truth.index.astype(str))
    if missing.any():
        raise ValueError(f"{int(missing.sum())} particles have no pose in {poses}")
    t = truth.loc[names]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"):
        tab[label] = t[label].to_numpy(np.float64)
    out_map = Path(out_map)
    star = out_map.with_name(out_map.stem + "_particles.star")
    write_particles(star, ParticleSet(general=pset.general, optics=pset.optics, particles=tab, path=star,
                                      project_dir=pset.project_dir), require_tomo=False)
    result = reconstruct_particles(star, out_map, sym=sym, ctf=True, pad=pad, tomograms=tomograms)
    from subtomo_nb.io.mrc import read_map

    vol, _ = read_map(result.merged_path)
    return np.asarray(vol, dtype=np.float64)
