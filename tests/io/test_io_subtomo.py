"""Pseudo-subtomograms and 2D stacks: RELION's layout, older layouts, consistency checks."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from io_testutils import make_pseudo_project, make_stack2d_project
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_header, write_map
from subtomo_nb.io.particles import read_particles
from subtomo_nb.io.star import read_star, write_star
from subtomo_nb.io.subtomo import (
    PseudoSubtomo,
    read_particle_stack2d,
    read_particle_subtomo,
    read_pseudo_subtomo,
    read_stack2d,
    write_pseudo_subtomo,
    write_stack2d,
)

N_TILTS = 41  # the reference data: tilts -60..+60 degrees in 3 degree steps
AMPLITUDE_CONTRAST = 0.07


def _negated(a: np.ndarray) -> np.ndarray:
    """a[-kz, -ky, kx] on the wrapped (FFTW) grid."""
    n = a.shape[0]
    idx = (-np.arange(n)) % n
    return a[idx][:, idx]


def test_reference_pseudo_subtomos(pseudo_dir):
    pset = read_particles(pseudo_dir / "particles.star")
    n = 32
    for i in range(len(pset)):
        ps = read_particle_subtomo(pset, i)
        assert ps.data.shape == (n, n, n) and ps.data.dtype == np.float32
        assert ps.ctf2.shape == ps.multiplicity.shape == (n, n, n // 2 + 1)
        assert ps.ctf2.dtype == ps.multiplicity.dtype == np.float32
        assert ps.multiplicity.min() >= 0 and ps.ctf2.min() >= 0
        # Friedel symmetry inside the stored half: the kx = 0 plane is Hermitian-consistent
        assert np.array_equal(ps.ctf2[:, :, 0], _negated(ps.ctf2)[:, :, 0])
        assert np.array_equal(ps.multiplicity[:, :, 0], _negated(ps.multiplicity)[:, :, 0])
        # frequency 0 sits at index 0 (not centred): every tilt crosses the origin, where the
        # CTF is -Q0 and the dose weight 1, so M(0) = #tilts and CTF2(0) = #tilts * Q0^2
        assert ps.multiplicity[0, 0, 0] == N_TILTS == ps.multiplicity.max()
        assert ps.ctf2[0, 0, 0] == pytest.approx(N_TILTS * AMPLITUDE_CONTRAST**2, rel=1e-5)
    assert read_header(pseudo_dir / "Subtomograms" / "p00001_data.mrc").pixel_size_A == pytest.approx(6.0)


def _random_ps(n=8, seed=0, multiplicity=True):
    rng = np.random.default_rng(seed)
    half = (n, n, n // 2 + 1)
    return PseudoSubtomo(
        rng.standard_normal((n, n, n)).astype(np.float32),
        rng.random(half).astype(np.float32),
        rng.integers(0, 9, half).astype(np.float32) if multiplicity else None,
    )


def test_write_read_relion_layout(tmp_path):
    ps = _random_ps()
    d, w = tmp_path / "p_data.mrc", tmp_path / "p_weights.mrc"
    write_pseudo_subtomo(d, w, ps, pixel_size_A=4.0)
    with mrcfile.open(w) as mrc:  # RELION's file: (2N, N, N/2+1) as [z, y, x], header pixel 1/pix
        assert mrc.data.shape == (16, 8, 5)
        assert np.array_equal(mrc.data[:8], ps.ctf2) and np.array_equal(mrc.data[8:], ps.multiplicity)
        assert float(mrc.voxel_size.x) == pytest.approx(0.25)
    back = read_pseudo_subtomo(d, w, box=8, pixel_size_A=4.0)
    assert np.array_equal(back.data, ps.data)
    assert np.array_equal(back.ctf2, ps.ctf2) and np.array_equal(back.multiplicity, ps.multiplicity)


def test_write_float16(tmp_path):
    ps = _random_ps(seed=2)
    d, w = tmp_path / "h_data.mrc", tmp_path / "h_weights.mrc"
    write_pseudo_subtomo(d, w, ps, 3.0, float16=True)
    assert read_header(d).mode == 12 and read_header(w).mode == 12
    back = read_pseudo_subtomo(d, w)
    assert back.ctf2.dtype == np.float32
    assert np.array_equal(back.ctf2, ps.ctf2.astype(np.float16).astype(np.float32))


def test_half_layout_without_multiplicity(tmp_path):
    ps = _random_ps(seed=3, multiplicity=False)
    d, w = tmp_path / "o_data.mrc", tmp_path / "o_weights.mrc"
    write_pseudo_subtomo(d, w, ps, 2.0)
    assert read_header(w).shape == (8, 8, 5)
    back = read_pseudo_subtomo(d, w)
    assert back.multiplicity is None and np.array_equal(back.ctf2, ps.ctf2)


@pytest.mark.parametrize("n", [8, 9])
def test_centred_full_ctf_layout(tmp_path, n):
    # a radially varying CTF-like weight, given on the centred full grid with a negative sign
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(n) * n, indexing="ij")
    profile = lambda r: np.cos(0.3 * r) + 0.1 * r  # noqa: E731
    expected = np.abs(profile(np.sqrt(kz**2 + ky**2 + kx**2))).astype(np.float32)
    c = np.arange(n) - n // 2  # centred grid: frequency 0 at index n // 2
    cz, cy, cx = np.meshgrid(c, c, c, indexing="ij")
    full = -np.abs(profile(np.sqrt(cz**2 + cy**2 + cx**2))).astype(np.float32)
    d, w = tmp_path / "f_data.mrc", tmp_path / "f_weights.mrc"
    write_map(d, np.zeros((n, n, n), np.float32), 1.0)
    write_map(w, full, 1.0)
    back = read_pseudo_subtomo(d, w)
    assert back.multiplicity is None and back.ctf2.shape == (n, n, n // 2 + 1)
    np.testing.assert_allclose(back.ctf2, expected, rtol=1e-6)


def test_box_mismatch_with_optics(tmp_path):
    ps = _random_ps()
    d, w = tmp_path / "b_data.mrc", tmp_path / "b_weights.mrc"
    write_pseudo_subtomo(d, w, ps, 2.0)
    with pytest.raises(InputError) as exc:
        read_pseudo_subtomo(d, w, box=10)
    assert "b_data.mrc" in str(exc.value) and exc.value.field == "rlnImageSize"


def test_box_mismatch_between_data_and_weights(tmp_path):
    d, w = tmp_path / "m_data.mrc", tmp_path / "m_weights.mrc"
    write_pseudo_subtomo(d, w, _random_ps(n=8), 2.0)
    write_map(d, np.zeros((10, 10, 10), np.float32), 2.0)
    with pytest.raises(InputError) as exc:
        read_pseudo_subtomo(d, w)
    assert "m_weights.mrc" in str(exc.value) and "field rlnCtfImage" in str(exc.value)


def test_box_mismatch_through_particle_set(tmp_path):
    star = make_pseudo_project(tmp_path / "p", n=2, box=8)
    blocks = read_star(star)
    blocks["optics"]["rlnImageSize"] = 12
    write_star(star, blocks)
    pset = read_particles(star)
    with pytest.raises(InputError) as exc:
        read_particle_subtomo(pset, 1)
    assert "p2_data.mrc" in str(exc.value) and exc.value.field == "rlnImageSize"


def test_pixel_size_mismatch(tmp_path):
    d, w = tmp_path / "px_data.mrc", tmp_path / "px_weights.mrc"
    write_pseudo_subtomo(d, w, _random_ps(), 5.0)
    with pytest.raises(InputError) as exc:
        read_pseudo_subtomo(d, w, pixel_size_A=6.0)
    assert "px_data.mrc" in str(exc.value) and exc.value.field == "rlnImagePixelSize"
    read_pseudo_subtomo(d, w, pixel_size_A=5.0 * (1 + 5e-4))  # within the 1e-3 tolerance


@pytest.mark.parametrize("header_pixel", [0.0, 1.0])
def test_unset_header_pixel_is_accepted(tmp_path, header_pixel):
    d, w = tmp_path / "u_data.mrc", tmp_path / "u_weights.mrc"
    write_pseudo_subtomo(d, w, _random_ps(), 2.0)
    write_map(d, np.ones((8, 8, 8), np.float32), header_pixel)
    assert read_pseudo_subtomo(d, w, pixel_size_A=6.0).data.shape == (8, 8, 8)


def test_non_cubic_data(tmp_path):
    d, w = tmp_path / "nc_data.mrc", tmp_path / "nc_weights.mrc"
    write_map(d, np.zeros((8, 8, 6), np.float32), 1.0)
    write_map(w, np.zeros((16, 8, 5), np.float32), 1.0)
    with pytest.raises(InputError) as exc:
        read_pseudo_subtomo(d, w)
    assert "nc_data.mrc" in str(exc.value) and "N x N x N" in str(exc.value)


def test_truncated_weights(tmp_path):
    d, w = tmp_path / "t_data.mrc", tmp_path / "t_weights.mrc"
    write_pseudo_subtomo(d, w, _random_ps(), 2.0)
    w.write_bytes(w.read_bytes()[:-64])
    with pytest.raises(InputError) as exc:
        read_pseudo_subtomo(d, w)
    assert "t_weights.mrc" in str(exc.value) and "truncated" in str(exc.value)


def test_stack2d_float16_and_float32(tmp_path):
    rng = np.random.default_rng(5)
    stack = rng.standard_normal((3, 6, 6)).astype(np.float32)
    for f16 in (False, True):
        path = tmp_path / f"s{int(f16)}_stack2d.mrcs"
        write_stack2d(path, stack, 2.5, float16=f16)
        data, px = read_stack2d(path, box=6, n_frames=3, pixel_size_A=2.5)
        assert data.dtype == np.float32 and data.shape == (3, 6, 6) and px == pytest.approx(2.5)
        assert np.array_equal(data, stack.astype(np.float16).astype(np.float32) if f16 else stack)
        assert read_header(path).is_stack
    with pytest.raises(InputError) as exc:
        read_stack2d(tmp_path / "s0_stack2d.mrcs", n_frames=4)
    assert "s0_stack2d.mrcs" in str(exc.value) and exc.value.field == "rlnTomoVisibleFrames"


def test_particle_stack2d(tmp_path):
    star = make_stack2d_project(tmp_path / "p", n=2, frames="[1,0,1,1,0]")
    pset = read_particles(star)
    assert read_particle_stack2d(pset, 1).shape == (3, 8, 8)
    blocks = read_star(star)
    blocks["particles"].loc[0, "rlnTomoVisibleFrames"] = "[1,1,1,1,0]"
    write_star(star, blocks)
    with pytest.raises(InputError) as exc:
        read_particle_stack2d(read_particles(star), 0)
    assert "1_stack2d.mrcs" in str(exc.value) and exc.value.field == "rlnTomoVisibleFrames"
