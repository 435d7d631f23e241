"""RELION 5 tilt-series projection matrices (Tomogram::setProjectionMatrix)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from subtomo_nb.geometry.tilt_series import project_points, projection_matrices

SIZE = (1001, 900, 301)  # odd sizes exercise int(S/2)
IMAGE = (1023, 1000)
PIX = 1.35
TILTS = np.arange(-60.0, 61.0, 15.0)


def _table(zrot=0.0, xtilt=None, xshift=0.0, yshift=0.0):
    d = {
        "rlnTomoYTilt": TILTS,
        "rlnTomoZRot": np.full(len(TILTS), zrot),
        "rlnTomoXShiftAngst": np.full(len(TILTS), xshift),
        "rlnTomoYShiftAngst": np.full(len(TILTS), yshift),
    }
    if xtilt is not None:
        d["rlnTomoXTilt"] = np.full(len(TILTS), xtilt)
    return pd.DataFrame(d)


CENTRE = np.array([500.0, 450.0, 150.0])
IMG_CENTRE = np.array([511.0, 500.0])


def test_centre_projects_to_image_centre():
    P = projection_matrices(_table(zrot=85.3), SIZE, PIX, IMAGE)
    assert P.shape == (len(TILTS), 4, 4)
    assert np.allclose(project_points(P, CENTRE), IMG_CENTRE, atol=1e-9)
    assert np.allclose(P[:, 3], [0, 0, 0, 1])
    R = P[:, :3, :3]
    assert np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max() < 1e-12  # orthonormal rows
    assert np.allclose(np.linalg.det(R), 1.0)


def test_depth_offset_sign():
    dz = 40.0
    # ZRot = 0: a point above the centre moves by +dz sin(tilt) in x (active Ry, RELION/gravis)
    P = projection_matrices(_table(), SIZE, PIX, IMAGE)
    q = project_points(P, CENTRE + [0, 0, dz])
    assert np.allclose(q[:, 0], IMG_CENTRE[0] + dz * np.sin(np.radians(TILTS)), atol=1e-9)
    assert np.allclose(q[:, 1], IMG_CENTRE[1], atol=1e-9)
    # third row: depth
    depth = (P @ np.append(CENTRE + [0, 0, dz], 1.0))[:, 2]
    assert np.allclose(depth, dz * np.cos(np.radians(TILTS)))
    # ZRot = 90: the same displacement appears along +y
    P90 = projection_matrices(_table(zrot=90.0), SIZE, PIX, IMAGE)
    q = project_points(P90, CENTRE + [0, 0, dz])
    assert np.allclose(q[:, 1], IMG_CENTRE[1] + dz * np.sin(np.radians(TILTS)), atol=1e-9)
    assert np.allclose(q[:, 0], IMG_CENTRE[0], atol=1e-9)
    # an x offset is rotated by ZRot = 90 onto +y, and shortened by cos(tilt)
    q = project_points(P90, CENTRE + [10.0, 0, 0])
    assert np.allclose(q[:, 1], IMG_CENTRE[1] + 10.0 * np.cos(np.radians(TILTS)), atol=1e-9)


def test_xtilt_and_shifts():
    dz = 40.0
    P = projection_matrices(_table(xtilt=10.0, xshift=13.5, yshift=-27.0), SIZE, PIX, IMAGE)
    # shifts: (+10, -20) pixels after projection
    q0 = project_points(P, CENTRE)
    assert np.allclose(q0, IMG_CENTRE + [10.0, -20.0], atol=1e-9)
    # Rx(10) applied first: (0, 0, dz) -> (0, -dz sin 10, dz cos 10), then Ry(tilt)
    q = project_points(P, CENTRE + [0, 0, dz]) - q0
    a = np.radians(10.0)
    t = np.radians(TILTS)
    assert np.allclose(q[:, 1], -dz * np.sin(a), atol=1e-9)
    assert np.allclose(q[:, 0], dz * np.cos(a) * np.sin(t), atol=1e-9)
    # without rlnTomoXTilt the x tilt is 0
    assert np.allclose(projection_matrices(_table(), SIZE, PIX, IMAGE),
                       projection_matrices(_table(xtilt=0.0), SIZE, PIX, IMAGE))  # fmt: skip


def test_missing_label_and_legacy_rows():
    with pytest.raises(ValueError, match="rlnTomoZRot"):
        projection_matrices(pd.DataFrame({"rlnTomoYTilt": [0.0]}), SIZE, PIX, IMAGE)
    P = projection_matrices(_table(zrot=30.0), SIZE, PIX, IMAGE)
    fmt = lambda r: "[" + ",".join(f"{v:.12f}" for v in r) + "]"  # noqa: E731
    legacy = pd.DataFrame({f"rlnTomoProj{c}": [fmt(p[i]) for p in P] for i, c in enumerate("XYZW")})
    assert np.allclose(projection_matrices(legacy, SIZE, PIX, IMAGE), P, atol=1e-9)
