"""HEALPix orientational sampling (RELION src/healpix_sampling.cpp)."""

from __future__ import annotations

import re

import healpy as hp
import numpy as np
import pytest

from subtomo_nb.geometry.healpix import (
    angular_step,
    direction_vectors,
    healpix_directions,
    local_orientations,
    orientation_grid,
    oversampled_children,
    oversampled_directions,
    oversampled_psi,
    psi_angles,
    psi_step,
    remove_symmetry_equivalent,
    sampling_directions,
)
from subtomo_nb.geometry.symmetry import point_group
from subtomo_nb.geometry.translations import translation_grid


def _angle(u, v):
    return np.degrees(np.arccos(np.clip(np.sum(u * v, axis=-1), -1.0, 1.0)))


def _read_sampling_star(path):
    text = path.read_text()
    general = dict(re.findall(r"^_(rln\w+)\s+(\S+)\s*$", text.split("data_sampling_directions")[0], flags=re.M))
    body = text.split("data_sampling_directions")[1]
    rows = [
        [float(x) for x in line.split()]
        for line in body.splitlines()
        if re.match(r"^\s*-?[\d.]+(e[-+]?\d+)?\s+-?[\d.]+(e[-+]?\d+)?\s*$", line)
    ]
    return general, np.array(rows)


@pytest.mark.parametrize("order", range(7))
def test_direction_counts_and_ranges(order):
    rot, tilt = healpix_directions(order)
    assert len(rot) == len(tilt) == 12 * 4**order
    assert rot.min() >= -180 and rot.max() <= 180 and tilt.min() >= 0 and tilt.max() <= 180
    # NEST pixel centres
    theta, phi = hp.pix2ang(2**order, np.arange(12 * 4**order), nest=True)
    assert np.allclose(direction_vectors(rot, tilt), direction_vectors(np.degrees(phi), np.degrees(theta)), atol=1e-12)
    assert len(sampling_directions(order, "C1")[0]) == 12 * 4**order


def test_angular_steps():
    assert [angular_step(n) for n in range(5)] == [60.0, 30.0, 15.0, 7.5, 3.75]
    assert angular_step(2, 1) == 7.5 and angular_step(4, 1) == 1.875
    assert psi_step(2) == 15.0 and psi_step(3) == 7.5
    psi = psi_angles(2)
    assert len(psi) == 24 and psi[0] == 0 and np.allclose(np.diff(psi), 15.0)
    assert len(psi_angles(2, step=7.0)) == 52  # ceil(360/7) samples, step adjusted to 360/52


def test_d2_order2_matches_relion(relion_reference):
    general, ref = _read_sampling_star(relion_reference / "sampling_D2_healpix2.star")
    assert general["rlnSymmetryGroup"] == "D2" and int(general["rlnHealpixOrder"]) == 2
    rot, tilt, pix = sampling_directions(2, "D2")
    assert ref.shape == (48, 2) and len(rot) == 48
    # same directions in the same order
    assert np.abs(rot - ref[:, 0]).max() < 1e-3 and np.abs(tilt - ref[:, 1]).max() < 1e-3
    # same psi step and offset grid (range 5 px, step 2 px on 4 A pixels)
    assert np.isclose(psi_step(2), float(general["rlnPsiStep"]))
    t = translation_grid(float(general["rlnOffsetRange"]), float(general["rlnOffsetStep"]), 4.0)
    assert np.isclose(np.abs(t).max(), 4.0) and np.linalg.norm(t, axis=1).max() <= 5.0
    assert np.allclose(np.unique(np.abs(t)), [0.0, 2.0, 4.0])
    # the function on explicit lists gives the same
    r2, t2, idx = remove_symmetry_equivalent(*healpix_directions(2), "D2")
    assert np.array_equal(idx, pix) and np.array_equal(r2, rot)
    grid = orientation_grid(2, "D2")
    assert grid[0].shape == (48 * 24,) and np.allclose(grid[2][:24], psi_angles(2))
    assert np.all(grid[0][:24] == rot[0])


@pytest.mark.parametrize("name", ["C2", "C6", "D2", "D7", "T", "O", "I", "I1", "I3", "I4"])
def test_reduced_sets_cover_sphere(name):
    order = 3
    rot, tilt, _ = sampling_directions(order, name)
    ops = point_group(name)
    npix = 12 * 4**order
    assert abs(len(rot) - npix / len(ops)) <= 0.15 * npix / len(ops) + 1
    kept = direction_vectors(rot, tilt)
    mates = np.einsum("jab,nb->jna", ops, kept).reshape(-1, 3)
    full = direction_vectors(*healpix_directions(order))
    worst = _angle(full[:, None], mates[None]).min(axis=1).max()
    assert worst < 1.5 * angular_step(order), worst
    # and no two kept directions are symmetry mates of each other (closer than half a pixel)
    m = mates.reshape(len(ops), -1, 3).transpose(1, 0, 2)  # (m, J, 3)
    d = _angle(kept[:, None, None, :], m[None])  # (n, m, J)
    d[np.arange(len(rot)), np.arange(len(rot)), :] = 180.0  # a direction may be its own mate (on an axis)
    assert d.min() > 0.5 * np.degrees(hp.max_pixrad(2**order)) - 1e-9


def test_oversampled_children():
    order = 2
    pix = np.array([0, 17, 191])
    r, t = oversampled_directions(pix, order, 1)
    fr, ft = healpix_directions(order + 1)
    for k, p in enumerate(pix):
        assert np.allclose(r[k], fr[4 * p : 4 * p + 4]) and np.allclose(t[k], ft[4 * p : 4 * p + 4])
    # children lie around the parent, within one coarse pixel radius
    pr, pt = healpix_directions(order)
    parent = direction_vectors(pr[pix], pt[pix])
    assert _angle(direction_vectors(r, t), parent[:, None]).max() < np.degrees(hp.max_pixrad(2**order))
    assert np.allclose(oversampled_psi([0.0, 15.0], 15.0), [[-3.75, 3.75], [11.25, 18.75]])
    rr, tt, pp = oversampled_children(pix, np.array([0.0, 15.0, 30.0]), order)
    assert rr.shape == (3, 8)
    assert np.allclose(rr[1], np.repeat(r[1], 2)) and np.allclose(pp[2], np.tile([26.25, 33.75], 4))
    # two orders of oversampling: 16 directions = the NEST children 16p .. 16p+15 (as a set)
    r2, t2 = oversampled_directions(np.array([5]), order, 2)
    fr2, ft2 = healpix_directions(order + 2)
    assert np.allclose(np.sort(direction_vectors(r2[0], t2[0]), axis=0),
                       np.sort(direction_vectors(fr2[80:96], ft2[80:96]), axis=0))  # fmt: skip


def _brute_force_min_angle(name, rot, tilt, prior_rot, prior_tilt):
    ops = point_group(name)
    v = direction_vectors(rot, tilt)
    p = direction_vectors(prior_rot, prior_tilt)
    return _angle(np.einsum("jab,nb->jna", ops, v), p).min(axis=0)


@pytest.mark.parametrize("name", ["C1", "C6", "D2"])
def test_local_search_direction_prior(name):
    order, sig = 4, 3.0
    prior = (130.0, 150.0, 100.0)  # for C6/D2 the prior lies outside the asymmetric unit
    res = local_orientations(*prior, sig, sig, sig, order, name)
    assert np.isclose(res.weight.sum(), 1.0)
    rot, tilt, _ = sampling_directions(order, name)
    ang_all = _brute_force_min_angle(name, rot, tilt, prior[0], prior[1])
    inside = np.nonzero(ang_all < 3 * sig)[0]
    assert len(inside) > 3
    assert np.array_equal(res.selected_directions, inside)  # all and only those within 3 sigma
    ang = ang_all[res.direction_index]
    dpsi = np.abs((res.psi - prior[2] + 180) % 360 - 180)
    assert ang.max() < 3 * sig and dpsi.max() < 3 * sig
    # Gaussian weights: w ∝ exp(-(a² + dpsi²) / 2 sigma²)
    g = np.exp(-(ang**2 + dpsi**2) / (2 * sig**2))
    assert np.allclose(res.weight, g / g.sum(), rtol=1e-9)
    assert np.allclose(res.rot, rot[res.direction_index]) and np.allclose(res.psi, psi_angles(order)[res.psi_index])


def test_local_search_tilt_only_and_fallback():
    order = 3
    res = local_orientations(0.0, 40.0, 0.0, 0.0, 5.0, 0.0, order, "C1")
    assert np.isclose(res.weight.sum(), 1.0)
    rot, tilt, _ = sampling_directions(order, "C1")
    expect = np.nonzero(np.abs(tilt - 40.0) < 15.0)[0]
    assert np.array_equal(res.selected_directions, expect)
    assert len(np.unique(np.round(rot[expect]))) > 10  # no restriction on rot
    g = np.exp(-((tilt[expect] - 40.0) ** 2) / 50.0)
    assert np.allclose(res.direction_prior, g / g.sum())
    assert len(res.selected_psi) == len(psi_angles(order)) and np.allclose(res.psi_prior, 1 / len(psi_angles(order)))
    # tilt prior with symmetry: D2 mates have tilt and 180 - tilt
    res2 = local_orientations(0.0, 150.0, 0.0, 0.0, 5.0, 0.0, order, "D2")
    r2, t2, _ = sampling_directions(order, "D2")
    assert np.all(np.abs(180.0 - t2[res2.selected_directions] - 150.0) < 15.0)
    # nothing within 3 sigma: the nearest sample alone, weight 1
    res3 = local_orientations(10.0, 33.0, 1.0, 0.001, 0.001, 0.001, order, "C1")
    assert len(res3.weight) == 1 and res3.weight[0] == 1.0 and res3.psi[0] == 0.0
