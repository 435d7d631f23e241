"""Soft masks against their formulas."""

from __future__ import annotations

import numpy as np
import pytest
from _fourier_helpers import assert_same_on_device

from subtomo_nb.fourier.masks import (
    centred_radius,
    mask_particle,
    raised_cosine_edge,
    soft_edge_box_mask,
    soft_sphere,
)


def test_soft_sphere_values() -> None:
    m = soft_sphere(32, 8.0, 4.0)
    c = 16
    assert m[c, c, c] == 1.0 and m[c, c, c + 7] == 1.0
    np.testing.assert_allclose(m[c, c, c + 10], 0.5)  # 0.5 - 0.5 cos(pi * (12 - 10) / 4)
    np.testing.assert_allclose(m[c, c, c + 9], 0.5 - 0.5 * np.cos(np.pi * 3 / 4))
    assert m[c, c, c + 12] == 0.0 and m[0, 0, 0] == 0.0
    assert soft_sphere(16, 4, 2, ndim=2).shape == (16, 16)


def test_mask_particle_mean_background() -> None:
    n, r, w = 16, 4.0, 3.0
    v = np.random.default_rng(0).normal(size=(n, n, n)) + 2.0
    out = mask_particle(v, r, w)
    # explicit reference (RELION softMaskOutsideMap, loops over voxels)
    c = n // 2
    sum_bg = tot = 0.0
    raised = np.zeros_like(v)
    for k in range(n):
        for i in range(n):
            for j in range(n):
                d = np.sqrt((k - c) ** 2 + (i - c) ** 2 + (j - c) ** 2)
                if d < r:
                    continue
                rc = 1.0 if d > r + w else 0.5 + 0.5 * np.cos(np.pi * (r + w - d) / w)
                raised[k, i, j] = rc
                tot += rc
                sum_bg += rc * v[k, i, j]
    bg = sum_bg / tot
    np.testing.assert_allclose(out, (1 - raised) * v + raised * bg, rtol=1e-12)
    assert out[c, c, c] == v[c, c, c]
    np.testing.assert_allclose(out[0, 0, 0], bg)
    np.testing.assert_allclose(mask_particle(v, r, w, background=0.0)[0, 0, 0], 0.0)
    # batched 2D images get their own background
    imgs = np.stack([np.full((n, n), 1.0), np.full((n, n), 3.0)])
    np.testing.assert_allclose(mask_particle(imgs, r, w, ndim=2)[:, 0, 0], [1.0, 3.0])


def test_soft_edge_box_mask() -> None:
    m = soft_edge_box_mask(20, 4.0)
    assert m[10, 10, 10] == 1.0 and m[10, 10, 4] == 1.0
    np.testing.assert_allclose(m[10, 10, 0], 0.5 - 0.5 * np.cos(np.pi * 0.5 / 4))
    np.testing.assert_allclose(m[10, 10, 19], m[10, 10, 0])
    np.testing.assert_allclose(m[0, 0, 0], m[10, 10, 0] ** 3)


# -- strict test device: masks created on the device, masking of device maps ----------------------


def test_masks_created_on_the_strict_device(be) -> None:
    h2d = dict(be.transfers.snapshot()["h2d"])
    assert_same_on_device(be, soft_sphere(24, 7.5, 3.0, backend=be), soft_sphere(24, 7.5, 3.0))
    assert_same_on_device(be, soft_sphere(17, 5.0, 0.0, ndim=2, dtype=np.float32, backend="strict"),
                          soft_sphere(17, 5.0, 0.0, ndim=2, dtype=np.float32))
    assert_same_on_device(be, soft_edge_box_mask(20, 4.0, dtype=np.float32, backend=be),
                          soft_edge_box_mask(20, 4.0, dtype=np.float32))
    assert_same_on_device(be, centred_radius((5, 6, 7), backend=be), centred_radius((5, 6, 7)))
    assert be.transfers.snapshot()["h2d"] == h2d  # made on the device, nothing uploaded


@pytest.mark.parametrize("background", ["mean", "zero", 0.5, "array"])
def test_mask_particle_strict(be, background) -> None:
    rng = np.random.default_rng(1)
    v = (rng.normal(size=(16, 16, 16)) + 2.0).astype(np.float32)
    noise = rng.normal(size=(16, 16, 16))
    bg_host = noise if background == "array" else background
    bg_dev = be.to_device(noise, "test") if background == "array" else background
    assert_same_on_device(be, mask_particle(be.to_device(v, "test"), 4.0, 3.0, background=bg_dev),
                          mask_particle(v, 4.0, 3.0, background=bg_host))
    imgs = rng.normal(size=(3, 16, 16))
    bg2 = bg_host if background != "array" else 0.0
    assert_same_on_device(be, mask_particle(be.to_device(imgs, "test"), 5.0, 2.0, background=bg2, ndim=2),
                          mask_particle(imgs, 5.0, 2.0, background=bg2, ndim=2))


def test_raised_cosine_edge() -> None:
    """1 inside, 0 outside, the raised cosine in between (0.5 half-way), a step for width 0."""
    d = np.array([0.0, 2.9, 3.0, 4.0, 5.0, 5.1, 9.0])
    np.testing.assert_allclose(raised_cosine_edge(d, 3.0, 2.0), [1, 1, 1, 0.5, 0, 0, 0], atol=1e-15)
    np.testing.assert_array_equal(raised_cosine_edge(d, 3.0, 0.0), [1, 1, 0, 0, 0, 0, 0])
