"""MRC maps: round trips, header-only reads, truncated/corrupt/non-cubic input."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest

from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_header, read_map, write_map


def _vol(shape=(6, 8, 10), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_round_trip_float32_exact(tmp_path):
    vol = _vol()
    path = tmp_path / "v.mrc"
    write_map(path, vol, 2.7)
    data, px = read_map(path)
    assert data.dtype == np.float32 and data.shape == (6, 8, 10)
    assert np.array_equal(data, vol)
    assert px == pytest.approx(2.7, rel=1e-6)
    with mrcfile.open(path) as mrc:  # mode 2, a volume, [z, y, x] = (nz, ny, nx)
        assert int(mrc.header.mode) == 2 and int(mrc.header.ispg) == 1
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (10, 8, 6)
    assert not list(tmp_path.glob(".*.tmp"))


def test_float16_option(tmp_path):
    vol = _vol(seed=1)
    path = tmp_path / "h.mrc"
    write_map(path, vol, 1.5, float16=True)
    assert read_header(path).mode == 12
    data, px = read_map(path)
    assert data.dtype == np.float32
    assert np.array_equal(data, vol.astype(np.float16).astype(np.float32))
    assert px == pytest.approx(1.5)


def test_read_header_without_data(tmp_path):
    path = tmp_path / "s.mrcs"
    write_map(path, _vol((5, 4, 4)), 3.0, image_stack=True)
    h = read_header(path)
    assert h.shape == (5, 4, 4) and h.is_stack and not h.is_cube
    assert h.voxel_size_A == pytest.approx((3.0, 3.0, 3.0)) and h.pixel_size_A == pytest.approx(3.0)
    write_map(tmp_path / "img.mrc", _vol((4, 6))[0:4], 1.0)
    assert read_header(tmp_path / "img.mrc").shape == (4, 6)


def test_reference_map_header(pseudo_dir):
    h = read_header(pseudo_dir / "ground_truth.mrc")
    assert h.shape == (32, 32, 32) and h.is_cube and h.pixel_size_A == pytest.approx(6.0)
    data, px = read_map(pseudo_dir / "ground_truth.mrc", require_cube=True)
    assert data.shape == (32, 32, 32) and px == pytest.approx(6.0)


def test_truncated_mrc(tmp_path):
    path = tmp_path / "cut.mrc"
    write_map(path, _vol((8, 8, 8)), 1.0)
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    for reader in (read_header, read_map):
        with pytest.raises(InputError) as exc:
            reader(path)
        assert "cut.mrc" in str(exc.value) and "truncated" in str(exc.value)
    path.write_bytes(raw[:300])  # not even a full header
    with pytest.raises(InputError) as exc:
        read_map(path)
    assert "cut.mrc" in str(exc.value)


def test_corrupt_mrc(tmp_path):
    path = tmp_path / "junk.mrc"
    path.write_bytes(b"\x07" * 4096)
    with pytest.raises(InputError) as exc:
        read_map(path)
    assert "junk.mrc" in str(exc.value) and "not a valid MRC" in str(exc.value)


def test_missing_mrc(tmp_path):
    with pytest.raises(InputError) as exc:
        read_map(tmp_path / "absent.mrc")
    assert "absent.mrc" in str(exc.value) and "not found" in str(exc.value)


def test_non_cubic_where_cube_required(tmp_path):
    path = tmp_path / "brick.mrc"
    write_map(path, _vol((8, 8, 6)), 1.0)
    read_map(path)  # fine without the requirement
    with pytest.raises(InputError) as exc:
        read_map(path, require_cube=True)
    assert "brick.mrc" in str(exc.value) and "cubic" in str(exc.value)


def test_nan_map_rejected(tmp_path):
    vol = _vol((4, 4, 4))
    vol[1, 2, 3] = np.nan
    path = tmp_path / "nan.mrc"
    with pytest.raises(ValueError):
        write_map(path, vol, 1.0)
    assert not path.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(path) as mrc:
            mrc.set_data(vol)
    with pytest.raises(InputError) as exc:
        read_map(path)
    assert "nan.mrc" in str(exc.value)
