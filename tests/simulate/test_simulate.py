"""Tests of the synthetic dataset (subtomo_nb.simulate)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.optimisation_set import read_optimisation_set
from subtomo_nb.io.star import read_star, write_star
from subtomo_nb.io.tomograms import read_tomograms
from subtomo_nb.simulate import DEFAULT_SNR
from subtomo_nb.simulate import TINY, simulate_tiny_project
from subtomo_nb.simulate.phantom import blobs, render_map
from subtomo_nb.simulate.scene import geodesic_sphere, make_tomogram_scene, triangulation_numbers
from subtomo_nb.simulate.tilt_series import dose_symmetric_order, tilt_scheme

PIX = 2.7


def _files(d: Path) -> list[Path]:
    return sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())


def test_determinism(tiny_project, tmp_path):
    """Same seed -> identical STAR files and MRC data (MRC headers carry a creation time label);
    another seed -> different picks."""
    a = Path(tiny_project["project_dir"])
    b = simulate_tiny_project(tmp_path / "again", seed=0, snr=None)["project_dir"]
    # other tests' jobs (<Process>/jobNNN/...) live in the shared project; the simulator writes none
    files = [f for f in _files(a) if not (len(f.parts) > 2 and f.parts[1].startswith("job"))]
    assert files == _files(Path(b))
    for f in files:
        if f.suffix == ".star":
            assert filecmp.cmp(a / f, Path(b) / f, shallow=False), f
        else:
            (x, px), (y, py) = read_map(a / f), read_map(Path(b) / f)
            assert px == py and x.dtype == y.dtype and np.array_equal(x, y), f
            assert (a / f).stat().st_size == (Path(b) / f).stat().st_size
    c = simulate_tiny_project(tmp_path / "other", seed=1, snr=None)["project_dir"]
    assert not filecmp.cmp(a / "particles.star", Path(c) / "particles.star", shallow=False)


def test_counts_and_layout(tiny_project):
    proj = Path(tiny_project["project_dir"])
    parts = read_star(proj / "particles.star")
    assert set(parts) == {"general", "optics", "particles"}
    assert parts["general"]["rlnTomoSubTomosAre2DStacks"] == 0
    n = len(parts["particles"])
    assert n == tiny_project["n_particles"] == 92  # one T=9 geodesic lattice: 10 T + 2
    tset = read_tomograms(proj / "tomograms.star")
    assert tset.names == ["TS_01"]
    row = tset.row("TS_01")
    assert (row["rlnTomoSizeX"], row["rlnTomoSizeY"], row["rlnTomoSizeZ"]) == tuple(TINY["tomogram_size"])
    assert row["rlnTomoTiltSeriesPixelSize"] == PIX and row["rlnTomoHand"] == -1
    ts = tset.tilt_table("TS_01")
    assert len(ts) == 9
    np.testing.assert_array_equal(ts["rlnTomoYTilt"], np.arange(-60, 61, 15))
    stack, px = read_map(proj / "tilt_series" / "TS_01.mrcs")
    assert stack.shape == (9, 640, 640) and px == pytest.approx(PIX)
    assert ts["rlnMicrographName"].iloc[3] == "000004@tilt_series/TS_01.mrcs"
    oset = read_optimisation_set(proj / "optimisation_set.star")
    assert oset["rlnTomoParticlesFile"] == "particles.star"
    assert oset["rlnTomoTomogramsFile"] == "tomograms.star"
    gt, gpx = read_map(proj / "ground_truth" / "map_bin4.mrc")
    mask, _ = read_map(proj / "masks" / "mask_align_bin4.mrc")
    assert gt.shape == mask.shape == (32, 32, 32) and gpx == pytest.approx(4 * PIX)
    assert mask.max() == 1.0 and mask.min() == 0.0 and mask.flat[np.argmax(gt)] == 1.0
    assert 10 * np.count_nonzero(mask) < mask.size  # tight around the central hexamer


def test_dose_symmetric_scheme():
    tilts, pre = tilt_scheme(60, 3, 3.0)
    assert len(tilts) == 41 and np.all(np.diff(tilts) > 0)
    order = dose_symmetric_order(tilts)
    np.testing.assert_array_equal(tilts[order[:7]], [0, 3, 6, -3, -6, 9, 12])
    assert pre[tilts == 0] == 0 and pre[tilts == 3] == 3 and pre[tilts == -3] == 9
    np.testing.assert_array_equal(np.sort(pre), np.arange(41) * 3.0)


def test_pick_truth_relation_and_normals(tiny_project):
    proj = Path(tiny_project["project_dir"])
    tomo = read_tomograms(proj / "tomograms.star").row("TS_01")
    size = np.array([tomo["rlnTomoSizeX"], tomo["rlnTomoSizeY"], tomo["rlnTomoSizeZ"]], dtype=float)
    picks = read_star(proj / "particles.star")["particles"]
    truth = read_star(proj / "ground_truth" / "particles_true.star")["particles"]
    scene = tiny_project["scenes"][0]
    cc = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
    pick = picks[cc].to_numpy() / PIX + size / 2
    A_sub = euler_to_matrix(picks["rlnTomoSubtomogramRot"], picks["rlnTomoSubtomogramTilt"],
                            picks["rlnTomoSubtomogramPsi"])
    origin = truth[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
    centre = pick - np.einsum("pij,pj->pi", A_sub, origin) / PIX
    np.testing.assert_allclose(centre, scene.centres, atol=1e-6)
    # the true orientation A_total = A_subtomo A_particle_true maps z onto the outward normal
    A_true = euler_to_matrix(truth["rlnAngleRot"], truth["rlnAngleTilt"], truth["rlnAnglePsi"])
    A_tot = A_sub @ A_true
    np.testing.assert_allclose(A_tot, scene.A_total, atol=1e-9)
    vc = scene.virion_centres[scene.virion_index]
    normal = (scene.centres - vc) / np.linalg.norm(scene.centres - vc, axis=1, keepdims=True)
    np.testing.assert_allclose(A_tot[:, :, 2], normal, atol=1e-9)
    # the picker prior: A_subtomo . A_prior maps z onto the normal; priors as spheres.py (0, 90, 0)
    A_prior = euler_to_matrix(picks["rlnAngleRot"], picks["rlnAngleTilt"], picks["rlnAnglePsi"])
    np.testing.assert_allclose((A_sub @ A_prior)[:, :, 2], normal, atol=1e-9)
    np.testing.assert_allclose(picks["rlnAngleTiltPrior"], 90.0)
    np.testing.assert_allclose(picks["rlnAnglePsiPrior"], 0.0, atol=1e-9)
    # picks sit 2.75 bin-4 pixels (11 TS pixels) inside the surface, plus ~2 px noise
    along = np.einsum("pi,pi->p", pick - scene.centres, normal)
    assert np.mean(along) == pytest.approx(-11.0, abs=1.0)
    assert 1.0 < np.std(pick - scene.centres - along[:, None] * normal) * np.sqrt(3 / 2) < 3.0


def test_lattice_spacing():
    for t, (h, k) in triangulation_numbers(40).items():
        if t in (7, 13, 25, 31):
            assert len(geodesic_sphere(h, k)) == 10 * t + 2
    rng = np.random.default_rng(3)
    scene = make_tomogram_scene(rng, "TS_01", n_virions=1)
    p = scene.centres * PIX
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nn5 = np.sort(d, axis=1)[:, :5]
    assert nn5.mean() == pytest.approx(95.0, rel=0.03)
    assert np.median(nn5[:, 0]) == pytest.approx(95.0, rel=0.12)
    # x axis of each hexamer points (within jitter) at its nearest neighbour, in the tangent plane
    nearest = np.argmin(d, axis=1)
    t = p[nearest] - p
    t -= np.einsum("pi,pi->p", t, scene.normals)[:, None] * scene.normals
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    cosang = np.einsum("pi,pi->p", t, scene.A_total[:, :, 0])
    assert np.median(cosang) > np.cos(np.deg2rad(5))


def test_phantom_chiral_not_d6():
    v = render_map(32, 5.0)
    assert np.unravel_index(np.argmax(v), v.shape) is not None
    # C6 about z: rotating by 60 degrees maps the blob set onto itself
    c, s, a = blobs()
    ang = np.deg2rad(60)
    R = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    key = lambda x: np.round(np.c_[x, s, a], 6).tolist()  # noqa: E731
    assert sorted(key(c @ R.T)) == sorted(key(c))
    # not D6: flipping z (2-fold about x) does not; not achiral: the mirror image differs
    flip = c * np.array([1, -1, -1])
    mirror = c * np.array([1, -1, 1])
    for other in (flip, mirror):
        assert sorted(key(other)) != sorted(key(c))
    # top and bottom differ
    assert not np.allclose(v, v[::-1])


def test_star_roundtrip(tiny_project, tmp_path):
    proj = Path(tiny_project["project_dir"])
    stars = [proj / "tomograms.star", proj / "tilt_series" / "TS_01.star", proj / "particles.star",
             proj / "optimisation_set.star", proj / "ground_truth" / "particles_true.star"]
    for f in stars:
        blocks = read_star(f)
        out = tmp_path / f.name
        write_star(out, blocks)
        again = read_star(out)
        assert list(again) == list(blocks)
        for name in blocks:
            if isinstance(blocks[name], dict):
                assert again[name] == blocks[name]
            else:
                assert blocks[name].equals(again[name]), (f, name)
        assert out.read_text() == f.read_text()


def test_noise_changes_images_only(tiny_project, tiny_project_noisy):
    a, b = Path(tiny_project["project_dir"]), Path(tiny_project_noisy["project_dir"])
    assert filecmp.cmp(a / "particles.star", b / "particles.star", shallow=False)
    clean, _ = read_map(a / "tilt_series" / "TS_01.mrcs")
    noisy, _ = read_map(b / "tilt_series" / "TS_01.mrcs")
    first = int(np.argmin(read_tomograms(a / "tomograms.star").tilt_table("TS_01")["rlnMicrographPreExposure"]))
    snr = np.var(clean[first]) / np.var(noisy[first] - clean[first])
    assert snr == pytest.approx(DEFAULT_SNR, rel=0.1)


@pytest.fixture(scope="module")
def tiny_project_d2(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Noise-free tiny project (:data:`TINY`, seed 0) with the D2 phantom (read-only)."""
    return simulate_tiny_project(tmp_path_factory.mktemp("tiny_project_d2"), seed=0, snr=None, particle="d2")


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


def _flip(v: np.ndarray, axis: int) -> np.ndarray:
    """``v(−r)`` along ``axis`` of an even box centred at ``n // 2`` (index ``i`` -> ``(n − i) mod n``)."""
    return np.roll(np.flip(v, axis), 1, axis=axis)


def test_d2_project_scene_truth_map_and_mask(tiny_project, tiny_project_d2):
    """The D2 project has the hexamer project's scene, picks and true poses, its own images and a
    D2-symmetric ground truth and mask; the result names each project's particle and symmetry."""
    a, b = Path(tiny_project["project_dir"]), Path(tiny_project_d2["project_dir"])
    assert (tiny_project["particle"], tiny_project["symmetry"]) == ("hexamer", "C6")
    assert (tiny_project_d2["particle"], tiny_project_d2["symmetry"]) == ("d2", "D2")
    assert tiny_project_d2["n_particles"] == 92
    for f in ("tomograms.star", "particles.star", "ground_truth/particles_true.star"):
        assert filecmp.cmp(a / f, b / f, shallow=False), f
    # the true orientation maps the reference z axis (a 2-fold of D2) onto the outward normal
    scene = tiny_project_d2["scenes"][0]
    np.testing.assert_allclose(scene.A_total[:, :, 2], scene.normals, atol=1e-9)
    hex_images, _ = read_map(a / "tilt_series" / "TS_01.mrcs")
    d2_images, _ = read_map(b / "tilt_series" / "TS_01.mrcs")
    assert hex_images.shape == d2_images.shape and _cc(hex_images, d2_images) < 0.9
    gt, px = read_map(b / "ground_truth" / "map_bin4.mrc")
    assert px == pytest.approx(4 * PIX)
    np.testing.assert_allclose(gt, render_map(32, 4 * PIX, scale=1.8, particle="d2"), atol=1e-6)
    # D2: the 2-folds about z, x and y ([z, y, x] axes); the Nyquist plane of the even box costs < 1 %
    for axes in ((1, 2), (0, 1), (0, 2)):
        assert _cc(gt, _flip(_flip(gt, axes[0]), axes[1])) > 0.99, axes
    for other in (np.rot90(gt, 1, axes=(1, 2)), _flip(gt, 0), _flip(gt, 2)):  # C4 about z, mirror images
        assert _cc(gt, other) < 0.5
    mask, _ = read_map(b / "masks" / "mask_align_bin4.mrc")
    assert mask.max() == 1.0 and mask.min() == 0.0 and mask.flat[np.argmax(gt)] == 1.0
    assert 10 * np.count_nonzero(mask) < mask.size
    assert _cc(mask, _flip(_flip(mask, 0), 1)) > 0.95


def test_d2_true_poses_reconstruct_the_d2_truth(tiny_project_d2):
    """The tilt images hold the D2 particle in the orientations ``particles_true.star`` gives: the
    reconstruction from the picks with the true poses (C1, noise-free) is the D2 ground truth, not
    its mirror image, not turned by 90° about z and not the hexamer."""
    from subtomo_nb.tasks.extract import extract_subtomos
    from subtomo_nb.tasks.reconstruct import reconstruct_particles
    from subtomo_nb.tasks.tutorial import particles_with_truth

    proj = Path(tiny_project_d2["project_dir"])
    extracted = extract_subtomos(tiny_project_d2["optimisation_set"], None, proj / "Extract" / "job002", binning=4,
                                 box=32, stack2d=False)
    truth_star = particles_with_truth(extracted, tiny_project_d2["particles_true"],
                                      proj / "Reconstruct" / "job003" / "particles_true.star")
    merged = reconstruct_particles(truth_star, proj / "Reconstruct" / "job003" / "merged.mrc", sym="C1",
                                   ctf=True).merged_path
    rec, px = read_map(merged)
    gt, _ = read_map(tiny_project_d2["map"])
    assert px == pytest.approx(4 * PIX)
    assert _cc(rec, gt) > 0.9  # 0.95
    for other in (_flip(gt, 0), _flip(gt, 2), np.rot90(gt, 1, axes=(1, 2)),
                  render_map(32, 4 * PIX, scale=1.8, particle="hexamer")):
        assert _cc(rec, other) < 0.5  # 0.11-0.22
