"""The starting reference of a symmetric auto-refine: is its symmetry where ``--sym`` puts it?

With ``--sym C6`` (or any point group but C1) every reconstruction is averaged over the group's
operators about the box centre, with the n-fold axis on z (RELION's convention). A reference
whose own symmetry axis is tilted or displaced against that gives, after the first iteration's
averaging, a map that is none of the two structures, and the refinement does not recover (the
case of a reference rotated by 20° about a tilted axis, or shifted 3 pixels sideways). RELION
refines such a reference as it is; here it is first checked, and where its symmetry is clearly
off the conventional axes it is put there with :func:`~subtomo_nb.initial_model.align_symmetry.align_symmetry`
(centre of mass to the box centre, then the rotation that best fits the group), as a user would
do with ``relion_align_symmetry`` before refining. A reference that already fits is left exactly
as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from subtomo_nb.geometry.symmetry import point_group, symmetrise_map

#: Relative symmetry residual ``|V − P V|² / |V|²`` above which the reference counts as not
#: symmetric about the conventional axes (a symmetric map has ~0.001 at 50 Å; one rotated 20°
#: off the axis or shifted 3 px sideways ~0.5).
ASYMMETRY_THRESHOLD = 0.05
#: Alignment is kept only if it lowers the residual at least this much (factor).
REQUIRED_IMPROVEMENT = 4.0


@dataclass
class ReferenceCheck:
    """Outcome of :func:`check_reference_symmetry`.

    Attributes
    ----------
    volume : the reference to refine from (the input, or the aligned map).
    residual : relative symmetry residual of the input.
    aligned : whether the reference was moved.
    aligned_residual : residual after alignment (NaN when no alignment was tried).
    rot, tilt, psi : Euler angles (degrees) of the rotation applied (``V(A.T r)``).
    centre_shift_px : shift (x, y, z) applied before the rotation (pixels).
    """

    volume: np.ndarray
    residual: float
    aligned: bool = False
    aligned_residual: float = float("nan")
    rot: float = 0.0
    tilt: float = 0.0
    psi: float = 0.0
    centre_shift_px: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def describe(self, sym: str) -> str:
        """One line for run.out."""
        if not self.aligned:
            tried = "" if np.isnan(self.aligned_residual) else f" (alignment gave {self.aligned_residual:.4f}; kept as is)"
            return (f"reference {sym} symmetry residual {self.residual:.4f} (|V - sym(V)|²/|V|²; 0 is perfectly "
                    f"symmetric about RELION's axes): refined as it is{tried}")
        return (f"reference {sym} symmetry residual {self.residual:.4f}: not symmetric about RELION's axes; "
                f"centre of mass moved by ({', '.join(f'{s:.2f}' for s in self.centre_shift_px)}) px and rotated "
                f"by rot {self.rot:.2f} tilt {self.tilt:.2f} psi {self.psi:.2f} deg (relion_align_symmetry) "
                f"→ residual {self.aligned_residual:.4f}")


def symmetry_residual(volume: np.ndarray, sym: str) -> float:
    """``|V − P V|² / |V|²`` with ``P`` the average over the operators of ``sym`` (0 for C1)."""
    v = np.asarray(volume, dtype=np.float64)
    sv = np.asarray(symmetrise_map(v.astype(np.float32), point_group(sym)), dtype=np.float64)
    return float(np.sum((v - sv) ** 2) / max(np.sum(v * v), 1e-300))


def check_reference_symmetry(volume: np.ndarray, sym: str, pixel_size_A: float, *, seed: int = 0
                             ) -> ReferenceCheck:
    """The reference to refine from under ``sym``: unchanged if it fits, aligned if clearly off.

    Parameters
    ----------
    volume
        Starting reference ``[z, y, x]`` (already low-passed to ``--ini_high``).
    sym
        Point group of the refinement.
    pixel_size_A
        Pixel size (Å).
    seed
        Seed of the alignment's random orientations.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if len(point_group(sym)) == 1:
        return ReferenceCheck(volume=vol, residual=0.0)
    res = symmetry_residual(vol, sym)
    if res <= ASYMMETRY_THRESHOLD:
        return ReferenceCheck(volume=vol, residual=res)
    from subtomo_nb.initial_model.align_symmetry import align_symmetry

    box = vol.shape[0]
    out = align_symmetry(vol, sym, pixel_size_A, box_size=min(64, box - box % 2), seed=seed)
    aligned = np.asarray(out.volume, dtype=np.float64)
    res_a = symmetry_residual(aligned, sym)
    if res_a * REQUIRED_IMPROVEMENT > res:
        return ReferenceCheck(volume=vol, residual=res, aligned_residual=res_a)
    return ReferenceCheck(volume=aligned, residual=res, aligned=True, aligned_residual=res_a, rot=out.rot,
                          tilt=out.tilt, psi=out.psi, centre_shift_px=out.centre_shift_px)
