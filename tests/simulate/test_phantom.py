"""Tests of the phantom registry and the D2 phantom (subtomo_nb.simulate.phantom)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from subtomo_nb.geometry.symmetry import point_group, symmetrise_map
from subtomo_nb.simulate.phantom import (
    D2_PARTICLE,
    DATASET_SCALE,
    HEXAMER,
    PHANTOMS,
    SUBUNIT_BLOBS,
    SYMMETRY,
    Phantom,
    blobs,
    get_phantom,
    render_map,
)

#: Gaussian low-pass (σ, Å) of the overlap correlations below: transmission 1/2 at about 40 Å.
LOWPASS_SIGMA_A = 8.0


def _hexamer_blobs_as_before(scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hexamer's blobs as ``phantom.blobs`` computed them before the registry (copied formula)."""
    sub = np.asarray(SUBUNIT_BLOBS, dtype=np.float64)
    k = np.arange(6)[:, None]
    az = np.deg2rad(sub[None, :, 1] + 60.0 * k)
    r = sub[None, :, 0] * scale
    centres = np.stack([r * np.cos(az), r * np.sin(az), np.broadcast_to(sub[None, :, 2] * scale, az.shape)], axis=-1)
    sigmas = np.broadcast_to(sub[None, :, 3], az.shape)
    amps = np.broadcast_to(sub[None, :, 4], az.shape)
    return centres.reshape(-1, 3), sigmas.reshape(-1).copy(), amps.reshape(-1).copy()


def _signed_permutations() -> list[np.ndarray]:
    """The 48 signed permutation matrices (the octahedral group with inversion, Oh)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[np.arange(3), perm] = signs
            out.append(m)
    return out


def _mismatch_A(op: np.ndarray, c: np.ndarray, s: np.ndarray, a: np.ndarray) -> float:
    """Largest distance (Å) from a blob moved by ``op`` to the nearest blob of the same width and amplitude."""
    moved = c @ op.T
    same = (s[:, None] == s[None, :]) & (a[:, None] == a[None, :])
    d = np.linalg.norm(moved[:, None, :] - c[None, :, :], axis=-1)
    return float(np.max(np.min(np.where(same, d, np.inf), axis=1)))


def _overlap_cc(c: np.ndarray, s: np.ndarray, a: np.ndarray, ops: np.ndarray, lowpass_A: float) -> np.ndarray:
    """Normalised overlap ``<V, V∘op⁻¹> / <V, V>`` of the blob map and its image under each of ``ops``.

    ``V`` is the blob map convolved with a Gaussian of ``lowpass_A`` (Å); the overlap of two
    Gaussian blobs is analytic: ``∝ a a' (σ σ')³ / S^{3/2} exp(−d² / 2S)``, ``S = σ² + σ'² + 2 σ_lp²``.
    """
    S = s[:, None] ** 2 + s[None, :] ** 2 + 2 * lowpass_A**2
    W = a[:, None] * a[None, :] * (s[:, None] * s[None, :]) ** 3 / S**1.5
    moved = np.einsum("rij,bj->rbi", ops, c)
    d2 = np.sum((c[None, :, None, :] - moved[:, None, :, :]) ** 2, axis=-1)
    d2_self = np.sum((c[:, None, :] - c[None, :, :]) ** 2, axis=-1)
    return np.sum(W * np.exp(-d2 / (2 * S)), axis=(1, 2)) / np.sum(W * np.exp(-d2_self / (2 * S)))


def _angle_to_group_deg(rots: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Smallest rotation angle (degrees) from each of ``rots`` to an element of ``group``."""
    cos = (np.einsum("rji,gjk->rgik", rots, group).trace(axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1))).min(axis=1)


def _rotations_to_search() -> np.ndarray:
    """5000 random rotations and the 24 rotations that map the coordinate axes onto each other."""
    axis_maps = [m for m in _signed_permutations() if np.linalg.det(m) > 0]
    return np.concatenate([Rotation.random(5000, random_state=0).as_matrix(), np.asarray(axis_maps)])


def test_registry():
    assert set(PHANTOMS) == {"hexamer", "d2"}
    assert PHANTOMS["hexamer"] is HEXAMER and PHANTOMS["d2"] is D2_PARTICLE
    assert (HEXAMER.symmetry, D2_PARTICLE.symmetry) == (SYMMETRY, "D2") == ("C6", "D2")
    assert HEXAMER.dataset_scale == DATASET_SCALE
    assert get_phantom("D2") is D2_PARTICLE and get_phantom(HEXAMER) is HEXAMER
    with pytest.raises(ValueError, match="d2, hexamer"):
        get_phantom("d4")
    for p in PHANTOMS.values():
        c, s, a = p.blobs()
        assert c.shape == (p.n_subunits * len(p.subunit_blobs), 3) and s.shape == a.shape == (len(c),)
        assert np.all((s >= 6.0) & (s <= 8.0))


def test_hexamer_is_unchanged():
    """The default phantom is the hexamer, blob for blob and bit for bit as before the registry."""
    for scale in (1.0, DATASET_SCALE):
        for got in (blobs(scale), blobs(scale, "hexamer"), HEXAMER.blobs(scale)):
            for x, y in zip(got, _hexamer_blobs_as_before(scale)):
                assert x.dtype == y.dtype and np.array_equal(x, y)
    ref = render_map(32, 10.8, scale=DATASET_SCALE)
    assert np.array_equal(ref, render_map(32, 10.8, scale=DATASET_SCALE, particle="hexamer"))
    assert np.array_equal(ref, render_map(32, 10.8, np.float32, DATASET_SCALE, HEXAMER))
    assert not np.allclose(ref, render_map(32, 10.8, scale=DATASET_SCALE, particle="d2"), atol=0.1)


def test_d2_blobs_are_mapped_onto_themselves_by_d2():
    c, s, a = blobs(D2_PARTICLE.dataset_scale, "d2")
    ops = point_group("D2")
    assert len(ops) == 4 and len(c) == 20
    for op in ops:
        assert _mismatch_A(op, c, s, a) < 1e-9
    # distinct blobs, none on an axis: each operator but the identity moves every blob
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 25.0
    # comparable to the hexamer: about 150 Å across and 100 Å tall (blob centres ± 2σ), inside a 230 Å mask
    ext = np.ptp(c, axis=0) + 4 * s.max()
    assert 130.0 < max(ext[0], ext[1]) < 170.0 and 85.0 < ext[2] < 115.0
    assert np.linalg.norm(c, axis=1).max() + 3 * s.max() < 115.0


def test_d2_blobs_have_no_other_axis_symmetry_and_no_mirror():
    """None of the 44 other signed permutations (4-folds, diagonal 2-folds, 3-folds, mirrors,
    inversion) maps the blob set onto itself: every one leaves a blob 5 Å or more from any match."""
    c, s, a = blobs(D2_PARTICLE.dataset_scale, "d2")
    d2 = point_group("D2")
    others = [m for m in _signed_permutations() if not any(np.array_equal(m, g) for g in d2)]
    assert len(others) == 44
    for op in others:
        assert _mismatch_A(op, c, s, a) > 5.0, op


def test_d2_is_chiral_and_of_no_higher_symmetry_at_40A():
    """At 40 Å (Gaussian low-pass σ 8 Å) the mirror image matches no rotation of the particle (best
    of 5024: < 0.9; the hexamer's is 0.94) and no rotation 30° or more away from D2 comes close."""
    c, s, a = blobs(D2_PARTICLE.dataset_scale, "d2")
    rots = _rotations_to_search()
    mirror = np.diag([1.0, 1.0, -1.0])
    cc_mirror = _overlap_cc(c, s, a, rots @ mirror, LOWPASS_SIGMA_A)
    assert cc_mirror.max() < 0.9
    far = _angle_to_group_deg(rots, point_group("D2")) >= 30.0
    assert _overlap_cc(c, s, a, rots[far], LOWPASS_SIGMA_A).max() < 0.85
    # the measure can tell: the D2 operators give 1, the hexamer's mirror image 0.94
    np.testing.assert_allclose(_overlap_cc(c, s, a, point_group("D2"), LOWPASS_SIGMA_A), 1.0, atol=1e-12)
    hc, hs, ha = blobs(DATASET_SCALE)
    assert _overlap_cc(hc, hs, ha, rots @ mirror, LOWPASS_SIGMA_A).max() > 0.9


def test_d2_map_has_d2_symmetry_only():
    """Box 33 (odd: no Nyquist plane), so that r -> -r on the grid is an exact flip of the array."""
    v = render_map(33, 10.8, scale=D2_PARTICLE.dataset_scale, particle="d2").astype(np.float64)
    norm = np.linalg.norm(v)
    # RELION's D2 operators (symmetrise_map averages V(R r)) leave it unchanged
    assert np.linalg.norm(symmetrise_map(v, point_group("D2")) - v) < 1e-6 * norm
    # the 2-folds about z, x and y as array flips ([z, y, x] indexing)
    for axes in ((1, 2), (0, 1), (0, 2)):
        assert np.linalg.norm(np.flip(v, axes) - v) < 1e-6 * norm
    # not C4 about z, not the mirror images
    for other in (np.rot90(v, 1, axes=(1, 2)), np.flip(v, 0), np.flip(v, 2), np.swapaxes(v, 1, 2)):
        assert np.corrcoef(other.ravel(), v.ravel())[0, 1] < 0.5
    assert np.unravel_index(np.argmax(v), v.shape) != (16, 16, 16)  # not a ball: no density peak at the centre


def test_phantom_dataclass_rejects_bad_definitions():
    bad = Phantom(name="x", symmetry="D2", subunit_blobs=SUBUNIT_BLOBS, coordinates="cylindrical",
                  dataset_scale=1.0, description="")
    with pytest.raises(ValueError, match="Cn"):
        bad.blobs()
    with pytest.raises(ValueError, match="coordinates"):
        Phantom(name="y", symmetry="C1", subunit_blobs=SUBUNIT_BLOBS, coordinates="polar",
                dataset_scale=1.0, description="").blobs()
