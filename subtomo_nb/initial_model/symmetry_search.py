"""The pieces of relion_align_symmetry's search: where it looks and how it scores (conventions §7.3).

* :func:`random_orientations`: the global search, uniform on the sphere with a random in-plane
  angle (``tilt`` by rejection with density ∝ ``sin(tilt)``);
* :func:`local_orientations`: the local grid around the best (psi stepped by the *range*, as
  RELION);
* :func:`symmetry_scores`: RELION's diff2 between a rotated map and its symmetrised copy,
  evaluated in Fourier space and batched over orientations (see
  :mod:`subtomo_nb.initial_model.align_symmetry` for the derivation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subtomo_nb._array import asnumpy
from subtomo_nb.fourier.grid import half_points
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix

__all__ = ["random_orientations", "local_orientations", "symmetry_scores"]

#: Sample points (orientations x symmetry operators x Fourier points) per batched gather.
_CHUNK_POINTS = 1_000_000


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
