"""2D tilt-image stacks -> 3D pseudo-subtomograms (RELION's forward insertion with multiplicity).

Mirrors ``FourierBackprojection::backprojectSlice_forward_with_multiplicity`` used by
relion_tomo_subtomo (relion-conventions.md §5.3 step 4): every 2D Fourier pixel ``(x, y)`` of
tilt ``f`` goes to the 3D position ``x u_f + y v_f`` (``u_f, v_f`` = the first two rows of the
tilt's 3x3 projection, already scaled by crop/box), mirrored with complex conjugation where that
position has negative x, and is splatted onto its 8 neighbours with
``m = |u_f| |v_f| * trilinear weight``:

    data += m X_f,   ctf2 += m W_f,   multiplicity += m.

Contributions on the ``x = 0`` plane are also added, conjugated, at ``(0, -y, -z)``. On the
2D ``x = 0`` column only ``y >= 0`` is inserted (rows ``y < 0``, including ``-b/2``, start at
``x = 1``), as RELION. Corners outside the 3D half grid are dropped.
"""

from __future__ import annotations

from typing import Any

from subtomo_nb._array import get_xp
from subtomo_nb.fourier.backprojector import trilinear_scatter_half
from subtomo_nb.fourier.fft import irfft3
from subtomo_nb.fourier.grid import freq_grid, half_points

__all__ = ["stack_to_pseudo_subtomo"]


def stack_to_pseudo_subtomo(images_half: Any, ctf_weights_half: Any, proj_rows: Any, box_3d: int,
                            data_scale: float = 1.0, insert_mask: Any = None) -> tuple[Any, Any, Any]:
    """Insert a particle's 2D tilt images into a 3D pseudo-subtomogram.

    Parameters
    ----------
    images_half
        ``(F, b, b//2+1)`` half transforms (:func:`~subtomo_nb.fourier.fft.rfft2`) of the
        CTF-premultiplied tilt images ``X_f``.
    ctf_weights_half
        ``(F, b, b//2+1)`` real weights ``W_f = CTF_f**2 dose_f**2`` (broadcastable).
    proj_rows
        ``(F, 2, 3)``: rows ``u_f, v_f`` of each tilt's 3x3 projection (particle-frame 3D ->
        tilt image 2D), including the crop/box factor; for a rotation ``A_f``
        (reference -> image) these are ``A_f[:2]``.
    box_3d
        Box of the pseudo-subtomogram (pixels).
    data_scale
        Factor applied to the data transform before the inverse FT (:func:`irfft3`, the
        unnormalised inverse sum). With our 1/N-normalised transforms a 2D slice of a projection
        is ``b`` times the 3D transform, so ``data_scale = 1 / b`` puts ``data`` on the
        :func:`rfft3` scale of a 3D map; extraction passes RELION's factor instead
        (:func:`subtomo_nb.tasks.extract.relion_data_scale`).
    insert_mask
        Optional ``(F, b, b//2+1)`` boolean: 2D pixels to insert (RELION inserts only
        ``x < xRanges(y, f)``, ``Tomogram::findDoseXRanges``); the others add nothing to any of
        the three volumes.

    Returns
    -------
    data
        Real ``(box_3d,)*3`` volume: inverse :func:`irfft3` of ``sum_f m X_f`` (premultiplied,
        not CTF-corrected), dtype float64 (float32 if the images are complex64).
    ctf2
        ``(box_3d, box_3d, box_3d//2+1)`` real: ``sum_f m W_f``.
    multiplicity
        Same shape: ``sum_f m``.
    """
    xp = get_xp(images_half, proj_rows)
    X = xp.asarray(images_half)
    nf, b = int(X.shape[0]), int(X.shape[-2])
    rows = xp.asarray(proj_rows, dtype=xp.float64).reshape(nf, 2, 3)
    u, v = rows[:, 0, :], rows[:, 1, :]
    k2 = half_points(b, 2, xp, xp.float64)  # (b, bh, 3) with z = 0
    # 3D positions x u + y v for every tilt and pixel: (F, b, bh, 3)
    pos = k2[None, ..., 0:1] * u[:, None, None, :] + k2[None, ..., 1:2] * v[:, None, None, :]
    kx, ky = freq_grid(b, 2, xp)
    keep = ~((kx == 0) & (ky < 0))
    if insert_mask is not None:
        keep = keep & xp.asarray(insert_mask, dtype=bool)
    scale = xp.linalg.norm(u, axis=-1) * xp.linalg.norm(v, axis=-1)  # |u||v| per tilt
    shp = X.shape
    W = xp.broadcast_to(xp.asarray(ctf_weights_half), shp)
    mvals = xp.broadcast_to(scale[:, None, None], shp)
    d, (c2, mult) = trilinear_scatter_half(
        int(box_3d), pos, X * mvals, [W * mvals, mvals], mask=xp.broadcast_to(keep, shp))
    cdtype = X.dtype if X.dtype == xp.complex64 else xp.complex128
    rdtype = xp.float32 if cdtype == xp.complex64 else xp.float64
    data = irfft3((d * data_scale).astype(cdtype), int(box_3d)).astype(rdtype)
    return data, c2.astype(rdtype), mult.astype(rdtype)
