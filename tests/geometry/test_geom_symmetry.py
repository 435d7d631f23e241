"""Point groups (RELION src/symmetries.cpp) and real-space symmetrisation."""

from __future__ import annotations

import re

import numpy as np
import pytest

from subtomo_nb.geometry.euler import rotation_about_axis
from subtomo_nb.geometry.symmetry import group_type, is_proper, point_group, symmetrise_map, symmetry_pairs

ORDERS = {
    "C1": 1, "C2": 2, "C6": 6, "C11": 11, "Ci": 2, "Cs": 2, "C4v": 8, "C3h": 6, "S4": 4,
    "D1": 2, "D2": 4, "D7": 14, "D3v": 12, "D4h": 16, "T": 12, "Td": 24, "Th": 24,
    "O": 24, "Oh": 48, "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60,
    "Ih": 120, "I1h": 120, "I2h": 120, "I3h": 120, "I4h": 120,
}  # fmt: skip
PROPER = {"C1", "C2", "C6", "C11", "D1", "D2", "D7", "T", "O", "I", "I1", "I2", "I3", "I4"}


def _contains(ops, M, tol=1e-6):
    return bool((np.abs(ops - M).max(axis=(1, 2)) < tol).any())


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_order_closure_orthogonality(name):
    ops = point_group(name)
    assert len(ops) == ORDERS[name]
    assert np.allclose(ops[0], np.eye(3))
    assert np.abs(ops @ ops.transpose(0, 2, 1) - np.eye(3)).max() < 1e-12
    prods = np.einsum("iab,jbc->ijac", ops, ops).reshape(-1, 3, 3)
    dist = np.abs(prods[:, None] - ops[None]).max(axis=(2, 3)).min(axis=1)
    assert dist.max() < 1e-6  # every product is in the group
    # no duplicates
    d = np.abs(ops[:, None] - ops[None]).max(axis=(2, 3)) + 10 * np.eye(len(ops))
    assert d.min() > 1e-3
    assert is_proper(name) == (name in PROPER)


def test_names_case_and_errors():
    assert np.array_equal(point_group("c6"), point_group("C6"))
    assert np.array_equal(point_group("i"), point_group("I2"))
    assert group_type("d7") == ("DN", 7)
    assert group_type("c4V") == ("CNV", 4)
    for bad in ("X3", "C", "Q", "D0", "I5", "S3", "C123"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            point_group(bad)


def test_generators_and_storage_convention():
    # RELION stores the transpose of the right-handed active rotation: first C6 op = Rz(60)^T
    assert np.allclose(point_group("C6")[1], rotation_about_axis(60.0, [0, 0, 1]).T, atol=1e-12)
    # D2: Rz(180), Rx(180), their product
    assert np.allclose(point_group("D2")[1:], [np.diag([-1, -1, 1]), np.diag([1, -1, -1]), np.diag([-1, 1, -1])])
    # Ci: inversion, with L = diag(1, 1, -1) for directions
    L, R = symmetry_pairs("Ci")
    assert np.allclose(R[1], -np.eye(3)) and np.allclose(L[1], np.diag([1, 1, -1]))
    # Cs: mirror z
    assert np.allclose(point_group("Cs")[1], np.diag([1, 1, -1]))


def _parse_relion_ops(path):
    lines = path.read_text().splitlines()
    mats = []
    for i, line in enumerate(lines):
        if re.match(r"\s*R\(\d+\)=", line):
            mats.append([[float(v) for v in lines[i + k].split()] for k in (1, 2, 3)])
    return np.array(mats)


@pytest.mark.parametrize("name", ["C6", "D2", "D7", "T", "O", "I", "I1", "I3"])
def test_matches_relion_printed_operators(relion_reference, name):
    ref = _parse_relion_ops(relion_reference / f"sym_{name}.txt")
    ours = point_group(name)
    assert ref.shape == ours.shape
    d = np.abs(ours[:, None] - ref[None]).max(axis=(2, 3))
    assert d.min(axis=1).max() < 1e-5 and d.min(axis=0).max() < 1e-5  # same sets
    assert np.abs(ours - ref).max() < 1e-5  # and even the same order


# ---------------------------------------------------------------- symmetrise_map


def _blobs(n, centres, sigma=1.6):
    c = n // 2
    z, y, x = np.meshgrid(*([np.arange(n) - c] * 3), indexing="ij")
    v = np.zeros((n, n, n))
    for px, py, pz in centres:
        v += np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * sigma**2))
    return v


def _peak_xyz(v):
    n = v.shape[0]
    k = np.unravel_index(np.argmax(v), v.shape)
    return np.array([k[2], k[1], k[0]]) - n // 2


def test_symmetrise_direction_single_operator():
    # out(r) = (V(r) + V(R r)) / 2: a blob at p reappears at R^T p
    n = 24
    p = np.array([6.0, 0.0, 2.0])
    R = point_group("C4")[1]  # Rz(90)^T
    out = symmetrise_map(_blobs(n, [p]), np.stack([np.eye(3), R]))
    half = out.copy()
    c = n // 2
    half[:, :, c + 3 :] = 0  # hide the original blob (x = 6)
    assert np.array_equal(_peak_xyz(half), R.T @ p)  # at (0, 6, 2), not (0, -6, 2)
    assert np.isclose(out.max(), 0.5, atol=0.02)


def test_symmetrise_invariant_map_unchanged():
    n = 32
    p = np.array([7.0, 2.0, 3.0])
    q = np.array([-2.0, 5.0, -6.0])
    for name in ("C6", "D2", "T"):
        ops = point_group(name)
        v = _blobs(n, [R @ p for R in ops] + [R @ q for R in ops], sigma=2.2)
        out = symmetrise_map(v.astype(np.float32), ops)
        assert out.dtype == np.float32
        err = np.abs(out - v).max() / v.max()  # trilinear interpolation error only
        assert err < 0.04, (name, err)
        # a non-invariant map does change
        w = _blobs(n, [p])
        assert np.abs(symmetrise_map(w, ops) - w).max() > 0.5


def test_c6_symmetrised_random_map_is_invariant():
    from scipy.ndimage import gaussian_filter

    n = 32
    rng = np.random.default_rng(3)
    v = gaussian_filter(rng.standard_normal((n, n, n)), 2.0)
    ops = point_group("C6")
    s = symmetrise_map(v, ops)
    c = n // 2
    z, y, x = np.meshgrid(*([np.arange(n) - c] * 3), indexing="ij")
    inner = x**2 + y**2 + z**2 < (0.35 * n) ** 2
    scale = np.abs(s[inner]).max()
    for R in ops[1:]:
        rotated = symmetrise_map(s, np.stack([R]))  # s(R r)
        assert np.abs(rotated - s)[inner].max() / scale < 0.1
    # and it is not invariant under a rotation outside the group (30 degrees about z)
    R30 = rotation_about_axis(30.0, [0, 0, 1])
    assert np.abs(symmetrise_map(s, np.stack([R30])) - s)[inner].max() / scale > 0.3
