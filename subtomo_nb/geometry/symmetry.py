"""Point-group symmetry operators as RELION builds, stores and applies them.

RELION (``src/symmetries.cpp``, inherited from Xmipp) describes each point group by a short list
of generators -- ``rot_axis n x y z`` (rotations by ``k*360/n`` degrees, ``k = 1..n-1``),
``mirror_plane x y z`` and ``inversion`` -- and closes the list under multiplication
(``SymList::compute_subgroup``). For a rotation generator it stores the *transpose* of the
right-handed active rotation matrix; a mirror with unit normal ``n`` is stored as
``I - 2 n n^T``; the inversion as ``-I``. :func:`point_group` reproduces that list, in RELION's
order, with the identity first, i.e. exactly the matrices ``relion_refine --sym G
--print_symmetry_ops`` prints.

Every stored operator ``R`` also has a companion matrix ``L`` (identity except for operators that
contain the inversion, where RELION sets ``L = diag(1, 1, -1)``). ``L`` only matters for
projection directions in the orientational sampling (a direction ``v`` has the symmetry mates
``L @ R.T @ v``); :func:`symmetry_pairs` returns both.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from .._array import get_xp
from .euler import rotation_about_axis

__all__ = [
    "point_group",
    "symmetry_pairs",
    "is_proper",
    "group_type",
    "symmetrise_map",
]

# Xmipp/RELION tolerance (XMIPP_EQUAL_ACCURACY) used to compare and clean matrices.
_EQUAL_ACCURACY = 1e-6

_S23 = np.sqrt(2.0 / 3.0)
_S13 = np.sqrt(1.0 / 3.0)
_GOLD_A = 0.5257311121191336  # 1 / sqrt(1 + phi^2)
_GOLD_B = 0.8506508083520399  # phi / sqrt(1 + phi^2)


def _icosahedral_generators(variant: str) -> list[tuple]:
    """Generators of RELION's icosahedral conventions (``fill_symmetry_class``).

    The axes are the mathematically exact unit vectors of which RELION's literal numbers are
    6 to 16 digit roundings (differences below 1e-8).
    """
    if variant in ("I", "I2"):  # Crowther 222: 2-fold on z
        return [
            ("rot", 2, (0.0, 0.0, 1.0)),
            ("rot", 5, (_GOLD_A, 0.0, _GOLD_B)),
            ("rot", 3, (0.0, 0.3568220897730899, 0.9341723589627157)),
        ]
    if variant == "I1":  # no-Crowther 222: 2-fold on x
        return [
            ("rot", 2, (1.0, 0.0, 0.0)),
            ("rot", 5, (_GOLD_B, 0.0, -_GOLD_A)),
            ("rot", 3, (0.9341723589627157, 0.3568220897730899, 0.0)),
        ]
    if variant == "I3":  # 5-fold on z
        return [
            ("rot", 2, (-_GOLD_A, 0.0, _GOLD_B)),
            ("rot", 5, (0.0, 0.0, 1.0)),
            ("rot", 3, (-0.4911234731884231, 0.3568220897730899, 0.7946544722917661)),
        ]
    if variant == "I4":  # 5-fold on z, other handedness
        return [
            ("rot", 2, (_GOLD_A, 0.0, _GOLD_B)),
            ("rot", 5, (0.8944271909999159, 0.0, 0.4472135954999579)),
            ("rot", 3, (0.4911234731884231, 0.3568220897730899, 0.7946544722917661)),
        ]
    raise ValueError(f"unknown icosahedral variant {variant!r}")  # pragma: no cover


_ICOS_MIRRORS = {
    "I": (1.0, 0.0, 0.0),
    "I2": (1.0, 0.0, 0.0),
    "I1": (0.0, 0.0, -1.0),
    "I3": (_GOLD_B, 0.0, _GOLD_A),
    "I4": (_GOLD_B, 0.0, -_GOLD_A),
}

_NAME_RE = re.compile(
    r"^(?:"
    r"(?P<cn>C)(?P<cn_n>\d{1,2})(?P<cn_s>[VH]?)"
    r"|(?P<ci>CI)|(?P<cs>CS)"
    r"|(?P<sn>S)(?P<sn_n>\d{1,2})"
    r"|(?P<dn>D)(?P<dn_n>\d{1,2})(?P<dn_s>[VH]?)"
    r"|(?P<t>T)(?P<t_s>[DH]?)"
    r"|(?P<o>O)(?P<o_s>H?)"
    r"|(?P<i>I)(?P<i_v>[1-5]?)(?P<i_s>H?)"
    r")$"
)


def group_type(name: str) -> tuple[str, int]:
    """Parse a RELION point-group symbol.

    Parameters
    ----------
    name
        Symbol such as ``"C1"``, ``"c6"``, ``"D7"``, ``"C4v"``, ``"T"``, ``"O"``, ``"I3"``,
        ``"I1h"`` (case-insensitive, as RELION's ``SymList::isSymmetryGroup``).

    Returns
    -------
    kind, order
        ``kind`` is one of ``"CN", "CI", "CS", "CNV", "CNH", "SN", "DN", "DNV", "DNH", "T", "TD",
        "TH", "O", "OH", "I", "I1", "I2", "I3", "I4", "IH", "I1H", "I2H", "I3H", "I4H"``;
        ``order`` is ``n`` for the families with an index, else ``-1``.

    Raises
    ------
    ValueError
        Unknown symbol, ``n < 1``, odd ``n`` for ``Sn``, or ``I5``/``I5h`` (not implemented in
        RELION either).
    """
    if not isinstance(name, str):
        raise ValueError(f"unknown symmetry group {name!r}")
    sym = name.strip().upper()
    m = _NAME_RE.match(sym)
    if m is None:
        raise ValueError(f"unknown symmetry group {name!r}")
    g = m.groupdict()
    if g["cn"]:
        n = int(g["cn_n"])
        kind = "CN" + g["cn_s"]
    elif g["ci"]:
        return "CI", -1
    elif g["cs"]:
        return "CS", -1
    elif g["sn"]:
        n = int(g["sn_n"])
        if n % 2:
            raise ValueError(f"symmetry group {name!r}: the order of Sn must be even")
        kind = "SN"
    elif g["dn"]:
        n = int(g["dn_n"])
        kind = "DN" + g["dn_s"]
    elif g["t"]:
        return "T" + g["t_s"], -1
    elif g["o"]:
        return "O" + g["o_s"], -1
    else:
        v = g["i_v"]
        if v == "5":
            raise ValueError(f"symmetry group {name!r}: I5/I5h are not implemented (as in RELION)")
        return "I" + v + g["i_s"], -1
    if n < 1:
        raise ValueError(f"symmetry group {name!r}: order must be >= 1")
    return kind, n


def _generators(kind: str, n: int) -> list[tuple]:
    """RELION's generator list (``SymList::fill_symmetry_class``)."""
    z, x, y = (0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    if kind == "CN":
        return [("rot", n, z)]
    if kind == "CI":
        return [("inv",)]
    if kind == "CS":
        return [("mirror", z)]
    if kind == "CNV":
        return [("rot", n, z), ("mirror", y)]
    if kind == "CNH":
        return [("rot", n, z), ("mirror", z)]
    if kind == "SN":
        return [("rot", n // 2, z), ("inv",)]
    if kind == "DN":
        return [("rot", n, z), ("rot", 2, x)]
    if kind == "DNV":
        return [("rot", n, z), ("rot", 2, x), ("mirror", x)]
    if kind == "DNH":
        return [("rot", n, z), ("rot", 2, x), ("mirror", z)]
    if kind == "T":
        return [("rot", 3, z), ("rot", 2, (0.0, _S23, _S13))]
    if kind == "TD":
        return [("rot", 3, z), ("rot", 2, (0.0, _S23, _S13)), ("mirror", (np.sqrt(2.0), np.sqrt(6.0), 0.0))]
    if kind == "TH":
        return [("rot", 3, z), ("rot", 2, (0.0, -_S23, -_S13)), ("inv",)]
    if kind == "O":
        return [("rot", 3, (_S13, _S13, _S13)), ("rot", 4, z)]
    if kind == "OH":
        return [("rot", 3, (_S13, _S13, _S13)), ("rot", 4, z), ("mirror", (0.0, 1.0, 1.0))]
    if kind.startswith("I"):
        variant = kind[:-1] if kind.endswith("H") else kind
        gens = _icosahedral_generators(variant)
        if kind.endswith("H"):
            gens = gens + [("mirror", _ICOS_MIRRORS[variant])]
        return gens
    raise ValueError(f"unknown symmetry kind {kind!r}")  # pragma: no cover


def _clean(M: np.ndarray) -> np.ndarray:
    M = M.copy()
    M[np.abs(M) < _EQUAL_ACCURACY] = 0.0
    return M


@lru_cache(maxsize=128)
def _relion_list(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(L, R) stacks without the identity, in RELION's order (``read_sym_file``)."""
    Ls: list[np.ndarray] = []
    Rs: list[np.ndarray] = []
    eye = np.eye(3)
    Lz = np.diag([1.0, 1.0, -1.0])
    for gen in _generators(kind, n):
        if gen[0] == "rot":
            fold, axis = gen[1], gen[2]
            for k in range(1, fold):
                R = rotation_about_axis(k * 360.0 / fold, axis)
                Ls.append(eye.copy())
                Rs.append(_clean(R).T.copy())
        elif gen[0] == "inv":
            Ls.append(Lz.copy())
            Rs.append(-eye)
        else:  # mirror plane with normal u
            u = np.asarray(gen[1], dtype=np.float64)
            u = u / np.linalg.norm(u)
            Ls.append(eye.copy())
            Rs.append(_clean(eye - 2.0 * np.outer(u, u)))

    # SymList::compute_subgroup: visit pairs (i, j) shell by shell (max(i, j) = s; first
    # i = 0..s with j = s, then i = s with j = s-1..0), append every new product R_i R_j.
    # Membership is looked up by a rounded key; a miss is confirmed by the exact tolerance test
    # (so a key that straddles a rounding boundary cannot create a duplicate).
    def key(Lm: np.ndarray, Rm: np.ndarray) -> bytes:
        return np.round(np.concatenate([Lm.ravel(), Rm.ravel()]) * 1e4).astype(np.int64).tobytes()

    known = {key(eye, eye)}
    known.update(key(Lm, Rm) for Lm, Rm in zip(Ls, Rs))
    s = 0
    while s < len(Rs):
        ii = list(range(s + 1)) + [s] * s
        jj = [s] * (s + 1) + list(range(s - 1, -1, -1))
        Larr, Rarr = np.stack(Ls), np.stack(Rs)
        newLs = Larr[ii] @ Larr[jj]
        newRs = Rarr[ii] @ Rarr[jj]
        for newL, newR in zip(newLs, newRs):
            if key(newL, newR) in known:
                continue
            allL = np.concatenate([eye[None], np.stack(Ls)])
            allR = np.concatenate([eye[None], np.stack(Rs)])
            close = (np.abs(allL - newL).max(axis=(1, 2)) <= _EQUAL_ACCURACY) & (
                np.abs(allR - newR).max(axis=(1, 2)) <= _EQUAL_ACCURACY
            )
            if close.any():
                continue
            Ls.append(_clean(newL))
            Rs.append(_clean(newR))
            known.add(key(Ls[-1], Rs[-1]))
        s += 1
    if not Rs:
        return np.zeros((0, 3, 3)), np.zeros((0, 3, 3))
    return np.stack(Ls), np.stack(Rs)


def symmetry_pairs(name: str) -> tuple[np.ndarray, np.ndarray]:
    """RELION's ``(L, R)`` operator pairs, identity first.

    These are ``HealpixSampling``'s ``L_repository``/``R_repository``: a projection direction
    ``v`` (unit vector, reference frame) has the symmetry mates ``L[j] @ R[j].T @ v``.

    Parameters
    ----------
    name
        Point-group symbol (see :func:`group_type`).

    Returns
    -------
    L, R : numpy.ndarray
        Each ``(n, 3, 3)`` float64; ``R`` equals :func:`point_group`.
    """
    kind, n = group_type(name)
    L, R = _relion_list(kind, n)
    eye = np.eye(3)[None]
    return np.concatenate([eye, L]), np.concatenate([eye, R])


def point_group(name: str) -> np.ndarray:
    """Symmetry operators of a point group exactly as RELION stores and applies them.

    Same matrices, in the same order, as ``relion_refine --sym <name> --print_symmetry_ops``
    (identity first). RELION uses ``R`` as ``V_sym(r) = mean_R V(R r)`` in real space
    (``symmetriseMap``) and ``F_sym(k) = sum_R F(R k)`` in Fourier space
    (``BackProjector::applyPointGroupSymmetry``); as the set is a group, ``R.T`` runs over
    the same set.

    Parameters
    ----------
    name
        ``C1``, ``Cn``, ``Ci``, ``Cs``, ``Cnv``, ``Cnh``, ``Sn`` (n even), ``Dn``, ``Dnv``,
        ``Dnh``, ``T``, ``Td``, ``Th``, ``O``, ``Oh``, ``I`` (= ``I2``), ``I1``, ``I2``, ``I3``,
        ``I4``, ``Ih``, ``I1h`` .. ``I4h``; case-insensitive.

    Returns
    -------
    numpy.ndarray
        ``(n_ops, 3, 3)`` float64 (a fresh copy).

    Raises
    ------
    ValueError
        For an unknown symbol (the message names it).
    """
    return symmetry_pairs(name)[1].copy()


def is_proper(name: str) -> bool:
    """True if the group contains only rotations (no mirror or inversion), e.g. ``C6``, ``I3``."""
    ops = point_group(name)
    return bool(np.all(np.linalg.det(ops) > 0))


def symmetrise_map(volume, ops: ArrayLike):
    """Real-space symmetrisation, as RELION's ``symmetriseMap``.

    ``out(r) = mean_R V(R r)`` with ``r`` the (x, y, z) voxel position relative to the box
    centre ``N // 2`` and trilinear interpolation (values outside the box count as 0). The
    identity should be part of ``ops`` (it is for :func:`point_group`). A map invariant under
    the group is returned unchanged (up to interpolation error).

    Parameters
    ----------
    volume
        Real 3D array ``[z, y, x]`` (numpy or cupy).
    ops
        Operators ``(n, 3, 3)`` acting on (x, y, z), e.g. ``point_group("C6")``.

    Returns
    -------
    array
        Symmetrised volume, same shape, module and float dtype as ``volume``
        (float32 for integer input).
    """
    xp = get_xp(volume)
    if xp is np:
        from scipy.ndimage import map_coordinates  # noqa: PLC0415
    else:  # pragma: no cover - GPU path
        from cupyx.scipy.ndimage import map_coordinates  # noqa: PLC0415
    vol = xp.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"symmetrise_map needs a 3D volume, got shape {vol.shape}")
    dtype = vol.dtype if xp.issubdtype(vol.dtype, xp.floating) else xp.float32
    vol = vol.astype(dtype, copy=False)
    R = np.asarray(ops, dtype=np.float64).reshape(-1, 3, 3)
    nz, ny, nx = vol.shape
    centre = np.array([nx // 2, ny // 2, nz // 2], dtype=np.float64)
    z, y, x = xp.meshgrid(
        xp.arange(nz, dtype=xp.float64) - centre[2],
        xp.arange(ny, dtype=xp.float64) - centre[1],
        xp.arange(nx, dtype=xp.float64) - centre[0],
        indexing="ij",
    )
    out = xp.zeros(vol.shape, dtype=xp.float64)
    for Rk in R:
        if np.allclose(Rk, np.eye(3), atol=1e-12):
            out += vol
            continue
        # source position (x', y', z') = R (x, y, z), then array indices [z', y', x']
        sx = Rk[0, 0] * x + Rk[0, 1] * y + Rk[0, 2] * z + centre[0]
        sy = Rk[1, 0] * x + Rk[1, 1] * y + Rk[1, 2] * z + centre[1]
        sz = Rk[2, 0] * x + Rk[2, 1] * y + Rk[2, 2] * z + centre[2]
        coords = xp.stack([sz, sy, sx])
        out += map_coordinates(vol, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    return (out / len(R)).astype(dtype)
