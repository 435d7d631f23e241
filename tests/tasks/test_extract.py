"""Tests of RELION's "Extract subtomos" (subtomo_nb.tasks.extract) on the tiny simulated project."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.fft import rfft3, shift_half
from subtomo_nb.fourier.fsc import fsc
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.tilt_series import projection_matrices
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.optimisation_set import read_optimisation_set
from subtomo_nb.io.particles import read_particles, visible_frames
from subtomo_nb.io.star import read_star
from subtomo_nb.io.subtomo import read_particle_stack2d, read_particle_subtomo
from subtomo_nb.io.tomograms import read_tomograms
from subtomo_nb.simulate import simulate_tiny_project
from subtomo_nb.tasks.extract import crop_circle, extract_subtomos

PIX = 2.7
BIN = 4
BOX = 32


def _truth_in_order(project: dict, pset) -> "object":
    truth = read_star(project["particles_true"])["particles"].set_index("rlnTomoParticleName")
    return truth.loc[pset.particles["rlnTomoParticleName"].astype(str)].reset_index()


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and "Extract" not in p.parts}


def test_outputs_2d(tiny_project, tiny_extract_2d):
    pset = read_particles(tiny_extract_2d)
    assert pset.general["rlnTomoSubTomosAre2DStacks"] == 1
    opt = pset.optics.iloc[0]
    assert opt["rlnImageDimensionality"] == 2 and opt["rlnImageSize"] == BOX
    assert opt["rlnImagePixelSize"] == pytest.approx(BIN * PIX) and opt["rlnTomoSubtomogramBinning"] == BIN
    assert opt["rlnCtfDataAreCtfPremultiplied"] == 1 and opt["rlnTomoTiltSeriesPixelSize"] == PIX
    assert "rlnCtfImage" not in pset.particles.columns
    assert pset.particles["rlnImageName"].iloc[0] == "Extract/job_2d/Subtomograms/TS_01/1_stack2d.mrcs"
    for i in range(len(pset)):
        vis = visible_frames(pset, i)
        assert vis.size == 9
        stack = read_particle_stack2d(pset, i)
        assert stack.shape == (vis.sum(), BOX, BOX)
    oset = read_optimisation_set(Path(tiny_extract_2d).parent / "optimisation_set.star")
    assert oset["rlnTomoParticlesFile"] == "Extract/job_2d/particles.star"
    assert oset["rlnTomoTomogramsFile"] == "tomograms.star"


def test_outputs_3d_and_offsets_applied(tiny_project, tiny_extract_3d):
    pset = read_particles(tiny_extract_3d)
    assert pset.general["rlnTomoSubTomosAre2DStacks"] == 0
    assert pset.optics.iloc[0]["rlnImageDimensionality"] == 3
    sub = read_particle_subtomo(pset, 0)
    assert sub.data.shape == (BOX,) * 3 and sub.ctf2.shape == sub.multiplicity.shape == (BOX, BOX, BOX // 2 + 1)
    assert sub.ctf2.min() >= 0 and sub.multiplicity.max() > 0
    # extraction from the truth origins: coordinates move to the true centres, origins reset to 0
    out = extract_subtomos(tiny_project["particles_true"], tiny_project["tomograms"],
                           Path(tiny_project["project_dir"]) / "Extract" / "job_truth3d",
                           binning=BIN, box=BOX, crop=24, stack2d=False, float16=False)
    p2 = read_particles(out)
    assert p2.optics.iloc[0]["rlnImageSize"] == 24
    assert read_particle_subtomo(p2, 0).data.shape == (24,) * 3
    np.testing.assert_array_equal(p2.particles[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]], 0.0)
    tomo = read_tomograms(tiny_project["tomograms"]).row("TS_01")
    size = np.array([tomo["rlnTomoSizeX"], tomo["rlnTomoSizeY"], tomo["rlnTomoSizeZ"]], dtype=float)
    centres = p2.particles[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                            "rlnCenteredCoordinateZAngst"]].to_numpy() / PIX + size / 2
    scene = tiny_project["scenes"][0]
    idx = p2.particles["rlnTomoParticleName"].str.split("/").str[1].astype(int).to_numpy() - 1
    np.testing.assert_allclose(centres, scene.centres[idx], atol=1e-6)


def test_inputs_unchanged_and_writes_only_out_dir(tiny_project, tmp_path):
    proj = Path(tiny_project["project_dir"])
    before = _digest(proj)
    out = tmp_path / "job"
    extract_subtomos(tiny_project["optimisation_set"], None, out, binning=BIN, box=BOX, max_dose=10.0, min_frames=3)
    assert _digest(proj) == before
    pset = read_particles(out / "particles.star")
    dose = read_tomograms(tiny_project["tomograms"]).tilt_table("TS_01")["rlnMicrographPreExposure"].to_numpy()
    for i in range(len(pset)):
        vis = visible_frames(pset, i)
        assert vis.sum() >= 3 and np.all(dose[vis] <= 10.0)
    # written names are absolute when out_dir is outside the project
    assert Path(pset.particles["rlnImageName"].iloc[0]).is_absolute()


def test_crop_circle_relion():
    img = np.ones((2, 16, 16), dtype=np.float32) * 3.0
    img[:, 8, 8] = 10.0
    out = crop_circle(img, 0.0, 5.0)
    assert out[0, 8, 8] == pytest.approx(7.0)  # mean outside (3) subtracted, centre weight 1
    assert out[0, 0, 0] == 0.0 and out[0, 8, 0] == 0.0


def test_2d_stack_centre_of_mass(tmp_path, monkeypatch):
    """Isotropic blobs extracted at the true centres sit at the box centre in every tilt (0.3 px).

    The phantom is replaced by one isotropic Gaussian (its CTF²-filtered projection is radially
    symmetric about the projected centre); images where another particle projects within 10
    binned pixels (front and back of the sphere overlap at some tilts) are skipped.
    """
    from subtomo_nb.simulate import tilt_series as ts_mod

    monkeypatch.setattr(ts_mod, "blobs", lambda scale=1.0, particle="hexamer": (np.zeros((1, 3)), np.array([10.0]), np.array([1.0])))
    proj = simulate_tiny_project(tmp_path / "sparse", snr=None, spacing_A=330.0, radius_range_A=(300.0, 300.0),
                                 margin_A=20.0)
    out = extract_subtomos(proj["particles_true"], proj["tomograms"], tmp_path / "sparse" / "Extract" / "com",
                           binning=BIN, box=BOX, stack2d=True, float16=False)
    pset = read_particles(out)
    scene = proj["scenes"][0]
    table = read_tomograms(proj["tomograms"]).tilt_table("TS_01")
    P = projection_matrices(table, scene.size, PIX, scene.size[:2])
    q = np.einsum("fij,pj->fpi", P[:, :2, :3], scene.centres) + P[:, None, :2, 3]  # (F, P, 2)
    y, x = np.indices((BOX, BOX))
    c = BOX // 2
    inner = np.hypot(x - c, y - c) < 5
    n_checked = 0
    for i in range(len(pset)):
        k = int(str(pset.particles["rlnTomoParticleName"].iloc[i]).split("/")[1]) - 1
        frames = np.flatnonzero(visible_frames(pset, i))
        for f, img in zip(frames, read_particle_stack2d(pset, i)):
            d = np.linalg.norm(q[f] - q[f, k], axis=1) / BIN
            d[k] = np.inf
            if d.min() < 10:
                continue
            w = np.where(inner & (img > 0.1 * img.max()), img, 0.0)
            com = np.array([(w * x).sum(), (w * y).sum()]) / w.sum()
            np.testing.assert_allclose(com, [c, c], atol=0.3)
            n_checked += 1
    assert n_checked >= 30


def test_reconstruction_fsc_against_truth(tiny_project, tiny_extract_3d, capsys):
    """Acceptance: noise-free pseudo-subtomos + true poses -> FSC >= 0.9 up to 0.8 Nyquist in the mask."""
    pset = read_particles(tiny_extract_3d)
    truth = _truth_in_order(tiny_project, pset)
    A = euler_to_matrix(truth["rlnAngleRot"], truth["rlnAngleTilt"], truth["rlnAnglePsi"])
    origin_px = truth[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy() / (BIN * PIX)
    bp = BackProjector(BOX)
    for i in range(len(pset)):
        sub = read_particle_subtomo(pset, i)
        F = shift_half(rfft3(sub.data.astype(np.float64)), origin_px[i])  # centre: shift by +origin
        bp.insert3d(A[i], F, sub.ctf2)
    rec = bp.reconstruct()
    gt, _ = read_map(tiny_project["map"])
    mask, _ = read_map(tiny_project["mask"])
    curve = fsc(rec, gt, mask)
    with capsys.disabled():
        print("\nFSC(rec, truth | mask) per shell:", np.round(curve, 3).tolist())
    assert curve[1:int(0.8 * BOX / 2) + 1].min() >= 0.9
    # the hand and sign are right: the mirror image correlates worse
    assert fsc(rec[::-1], gt, mask)[1:9].mean() < curve[1:9].mean() - 0.1


def test_projection_of_pick_is_patch_centre_geometry(tiny_project):
    """The RELION 5 projection convention used by extraction matches the simulator's images."""
    tset = read_tomograms(tiny_project["tomograms"])
    table = tset.tilt_table("TS_01")
    P = projection_matrices(table, (320, 320, 200), PIX, (320, 320))
    assert P.shape == (9, 4, 4)
    # the tomogram centre projects near the image centre (shifts of a few Å only)
    q = P[:, :2, :] @ np.array([160.0, 160.0, 100.0, 1.0])
    assert np.all(np.abs(q - 160.0) < 30.0)
