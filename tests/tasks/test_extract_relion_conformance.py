"""Extraction against relion_tomo_subtomo's own outputs (``shared/.../extract_tiny``).

RELION 5 extracted 30 particles of the tiny synthetic project (``--b 32 --bin 4``, float32), once
as 3D pseudo-subtomograms and once as 2D stacks (``--stack2d``). Every file we write for the same
input is compared with RELION's: data, CTF² and multiplicity separately, by correlation, by
least-squares scale and by the largest voxel difference. The options RELION's job form sets
(``--float16``, ``--max_dose``, ``--min_frames``, ``--crop``) are checked against RELION's files
where they determine them, and against RELION's rules where they do not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from subtomo_nb.io.particles import read_particles
from subtomo_nb.io.star import read_star
from subtomo_nb.io.subtomo import read_particle_stack2d, read_particle_subtomo
from subtomo_nb.io.tomograms import read_tomograms
from subtomo_nb.simulate.project import simulate_tiny_project
from subtomo_nb.tasks.extract import extract_subtomos, stack2d_pseudo_subtomo
from subtomo_nb.tasks.reconstruct import reconstruct_particles
from subtomo_nb.tasks.tutorial import particles_with_truth
from subtomo_nb.io.mrc import read_map
from subtomo_nb.fourier.fsc import fsc
from tests._shared import relion_reference

TOMO = "TS_01"


def _read(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float64)


def _agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """Correlation, least-squares scale (ours / RELION's) and max |difference| / max |RELION's|."""
    a, b = ours.ravel(), ref.ravel()
    return (float(np.corrcoef(a, b)[0, 1]), float(a @ b / (b @ b)),
            float(np.abs(a - b).max() / np.abs(b).max()))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A writable copy of ``extract_tiny`` (inputs and RELION's outputs)."""
    src = relion_reference() / "extract_tiny"
    if not src.is_dir():
        pytest.skip(f"{src} not found: the relion_tomo_subtomo reference extraction is absent")
    dst = tmp_path_factory.mktemp("extract_tiny") / "project"
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture(scope="module")
def ours(project: Path) -> dict[str, Path]:
    """Our extraction of the same input with RELION's command-line defaults (float32)."""
    out = {}
    for kind, stack2d in (("3d", False), ("2d", True)):
        out[kind] = extract_subtomos(project / "optimisation_set.star", None, project / f"ours_{kind}",
                                     binning=4, box=32, stack2d=stack2d, float16=False)
    return out


@pytest.fixture(scope="module")
def truth(project: Path, tmp_path_factory) -> dict:
    """The tiny project regenerated (seed 0): its tilt series must be the one RELION read."""
    sim = simulate_tiny_project(tmp_path_factory.mktemp("tiny_truth"), seed=0)
    ts_sim = _read(Path(sim["project_dir"]) / "tilt_series" / f"{TOMO}.mrcs")
    ts_ref = _read(project / "tilt_series" / f"{TOMO}.mrcs")
    if ts_sim.shape != ts_ref.shape or not np.array_equal(ts_sim, ts_ref):
        pytest.skip("the simulator no longer reproduces extract_tiny's tilt series: no ground truth for it")
    return sim


def _names(star: Path) -> list[str]:
    return sorted(read_star(star)["particles"]["rlnTomoParticleName"].astype(str))


def _visible(star: Path) -> dict[str, np.ndarray]:
    """``rlnTomoVisibleFrames`` of each particle as booleans."""
    parts = read_star(star)["particles"]
    return {str(n): np.array([int(v) for v in str(vf).strip("[]").split(",")], dtype=bool)
            for n, vf in zip(parts["rlnTomoParticleName"], parts["rlnTomoVisibleFrames"])}


def _files(folder: Path, suffix: str) -> list[Path]:
    return sorted((folder / "Subtomograms" / TOMO).glob(f"*{suffix}"))


def test_every_3d_pseudo_subtomogram_equals_relions(project: Path, ours: dict[str, Path]):
    ref_dir = project / "relion_3d"
    assert _names(ours["3d"]) == _names(ref_dir / "particles.star")
    files = _files(ref_dir, "_data.mrc")
    assert len(files) == 30
    for f in files:
        root = f.name[: -len("_data.mrc")]
        with mrcfile.open(project / "ours_3d" / "Subtomograms" / TOMO / f.name) as m:
            assert m.data.dtype == np.float32 and m.data.shape == (32, 32, 32)
            assert m.voxel_size.x == pytest.approx(10.8, rel=1e-6)
        corr, scale, err = _agreement(_read(project / "ours_3d" / "Subtomograms" / TOMO / f.name), _read(f))
        assert corr > 0.99999 and abs(scale - 1) < 1e-4 and err < 1e-4, (root, "data", corr, scale, err)
        w_ref = _read(ref_dir / "Subtomograms" / TOMO / f"{root}_weights.mrc")
        w_ours = _read(project / "ours_3d" / "Subtomograms" / TOMO / f"{root}_weights.mrc")
        assert w_ours.shape == w_ref.shape == (64, 32, 17)
        for part, sl in (("ctf2", slice(0, 32)), ("multiplicity", slice(32, 64))):
            corr, scale, err = _agreement(w_ours[sl], w_ref[sl])
            assert corr > 0.99999 and abs(scale - 1) < 1e-4 and err < 1e-4, (root, part, corr, scale, err)


def test_every_2d_stack_equals_relions(project: Path, ours: dict[str, Path]):
    ref_dir = project / "relion_2d"
    assert _names(ours["2d"]) == _names(ref_dir / "particles.star")
    files = _files(ref_dir, "_stack2d.mrcs")
    assert len(files) == 30
    for f in files:
        a = _read(project / "ours_2d" / "Subtomograms" / TOMO / f.name)
        b = _read(f)
        assert a.shape == b.shape
        for i in range(b.shape[0]):  # every tilt image on its own
            corr, scale, err = _agreement(a[i], b[i])
            assert corr > 0.99999 and abs(scale - 1) < 1e-4 and err < 1e-4, (f.name, i, corr, scale, err)


@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_particle_tables_equal_relions(project: Path, ours: dict[str, Path], kind: str):
    ref = read_star(project / f"relion_{kind}" / "particles.star")
    mine = read_star(ours[kind])
    assert mine["general"] == ref["general"]
    for block in ("optics", "particles"):
        r, o = ref[block], mine[block]
        assert set(o.columns) == set(r.columns), block
        o = o.set_index("rlnTomoParticleName").loc[r["rlnTomoParticleName"]] if block == "particles" else o
        r = r.set_index("rlnTomoParticleName") if block == "particles" else r
        for c in r.columns:
            if c in ("rlnImageName", "rlnCtfImage"):  # the job directory differs: compare the part inside it
                strip = lambda s: s.split("/", 1)[1]  # noqa: E731
                assert [strip(v) for v in o[c].astype(str)] == [strip(v) for v in r[c].astype(str)], c
            elif r[c].dtype.kind in "fi":
                np.testing.assert_allclose(o[c].to_numpy(float), r[c].to_numpy(float), rtol=1e-6, atol=1e-4,
                                           err_msg=c)
            else:
                assert list(o[c].astype(str)) == list(r[c].astype(str)), c


@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_reconstruction_from_relions_files_equals_ours(project: Path, ours: dict[str, Path], truth: dict,
                                                       kind: str):
    """Our readers on RELION's files give the map that our own extraction gives (true poses)."""
    maps = {}
    for label, star in (("relion", project / f"relion_{kind}" / "particles.star"), ("ours", ours[kind])):
        with_truth = particles_with_truth(star, truth["particles_true"],
                                          project / f"truth_{label}_{kind}" / "particles.star", seed=0)
        res = reconstruct_particles(with_truth, project / f"truth_{label}_{kind}" / "merged.mrc", sym="C1",
                                    tomograms=project / "tomograms.star")
        maps[label], _ = read_map(res.merged_path)
    corr, scale, err = _agreement(maps["ours"], maps["relion"])
    assert corr > 0.99999 and abs(scale - 1) < 1e-4 and err < 1e-3, (corr, scale, err)
    # and it is the particle, not noise: FSC against the ground truth inside its mask
    gt, _ = read_map(truth["map"])
    mask, _ = read_map(truth["mask"])
    f = np.asarray(fsc(maps["relion"], gt, mask))
    assert f[1:10].min() > 0.85, np.round(f, 2)


def test_float16_output_is_relions_values_in_mode_12(project: Path):
    """``--float16`` (the job form's default) writes RELION's values in MRC mode 12."""
    star = extract_subtomos(project / "optimisation_set.star", None, project / "ours_3d_f16", binning=4, box=32,
                            stack2d=False, float16=True)
    pset = read_particles(star)
    for name in ("1", "40", "88"):
        f = project / "ours_3d_f16" / "Subtomograms" / TOMO / f"{name}_data.mrc"
        with mrcfile.open(f) as m:
            assert m.header.mode == 12
        ref = _read(project / "relion_3d" / "Subtomograms" / TOMO / f"{name}_data.mrc")
        corr, scale, err = _agreement(_read(f), ref)
        assert corr > 0.99999 and abs(scale - 1) < 1e-3 and err < 2e-3, (name, corr, scale, err)
    # and our reader takes them
    assert read_particle_subtomo(pset, 0).data.shape == (32, 32, 32)


def test_max_dose_and_min_frames_follow_relions_visibility(project: Path):
    """``--max_dose`` drops the tilts above the dose; each kept tilt image is RELION's own.

    RELION processes the tilts of a 2D stack independently, so with ``--max_dose 15`` every image
    must equal RELION's default extraction of that tilt, and the stack must hold exactly the tilts
    with ``rlnMicrographPreExposure <= 15`` (``Tomogram::getVisibilityMinFramesMaxDose``).
    ``--min_frames`` above the number of such tilts drops every particle.
    """
    dose = read_tomograms(project / "tomograms.star").tilt_table(TOMO)["rlnMicrographPreExposure"].to_numpy(float)
    kept = np.flatnonzero(dose <= 15.0)
    assert 0 < kept.size < dose.size
    star = extract_subtomos(project / "optimisation_set.star", None, project / "ours_2d_dose15", binning=4, box=32,
                            stack2d=True, float16=False, max_dose=15.0)
    pset = read_particles(star)
    ref = read_particles(project / "relion_2d" / "particles.star")
    ref_rows = {n: i for i, n in enumerate(ref.particles["rlnTomoParticleName"].astype(str))}
    vis_mine, vis_ref = _visible(star), _visible(project / "relion_2d" / "particles.star")
    assert len(pset.particles) == 30
    for i, name in enumerate(pset.particles["rlnTomoParticleName"].astype(str)):
        vis, ref_vis = vis_mine[name], vis_ref[name]
        assert np.array_equal(vis, ref_vis & (dose <= 15.0)), name
        mine = read_particle_stack2d(pset, i)
        full = read_particle_stack2d(ref, ref_rows[name])
        # RELION's stack holds its visible tilts in order: pick those that survive the dose limit
        full_frames = np.flatnonzero(ref_vis)
        pick = [j for j, f in enumerate(full_frames) if dose[f] <= 15.0]
        corr, scale, err = _agreement(mine, full[pick])
        assert corr > 0.99999 and abs(scale - 1) < 1e-4 and err < 1e-4, (name, corr, scale, err)
    # 3D: the same tilts inserted; equal to those 2D images (RELION's own, checked above) turned into a volume
    tset = read_tomograms(project / "tomograms.star")
    star3 = extract_subtomos(project / "optimisation_set.star", None, project / "ours_3d_dose15", binning=4, box=32,
                             stack2d=False, float16=False, max_dose=15.0)
    p3 = read_particles(star3)
    for i in (0, 11, 29):
        a = read_particle_subtomo(p3, i)
        b = stack2d_pseudo_subtomo(pset, tset, i)
        for part in ("data", "ctf2", "multiplicity"):
            corr, scale, err = _agreement(getattr(a, part), getattr(b, part))
            assert corr > 0.9999 and abs(scale - 1) < 1e-3, (i, part, corr, scale, err)
    empty = extract_subtomos(project / "optimisation_set.star", None, project / "ours_2d_minframes", binning=4,
                             box=32, stack2d=True, float16=False, max_dose=15.0, min_frames=int(kept.size) + 1)
    assert len(read_star(empty)["particles"]) == 0


def test_crop_keeps_relions_scale(project: Path):
    """``--crop 24`` from ``--b 32``: the particle keeps RELION's values.

    RELION scales the cropped volume by ``box / (crop · sqrt(binning))`` before its unitary
    inverse FFT so that the value scale does not depend on the crop. The central particle region
    of our cropped volume must therefore match RELION's uncropped one (the edges differ: the
    circle crop is narrower), and the 2D stack likewise.
    """
    z, y, x = np.indices((24,) * 3)
    sphere = np.sqrt((x - 12) ** 2 + (y - 12) ** 2 + (z - 12) ** 2) < 8
    yy, xx = np.indices((24, 24))
    disc = np.hypot(xx - 12, yy - 12) < 8
    for stack2d, suffix, region in ((False, "_data.mrc", sphere), (True, "_stack2d.mrcs", disc)):
        kind = "2d" if stack2d else "3d"
        star = extract_subtomos(project / "optimisation_set.star", None, project / f"ours_{kind}_crop24", binning=4,
                                box=32, crop=24, stack2d=stack2d, float16=False)
        optics = read_star(star)["optics"]
        assert int(optics["rlnImageSize"].iloc[0]) == 24
        corrs, scales = [], []
        vis_ref = _visible(project / f"relion_{kind}" / "particles.star") if stack2d else {}
        vis_mine = _visible(star) if stack2d else {}
        for f in _files(project / f"relion_{kind}", suffix):
            ref = _read(f)
            mine = _read(project / f"ours_{kind}_crop24" / "Subtomograms" / TOMO / f.name)
            assert mine.shape[-1] == 24
            if stack2d:  # the narrower box is visible in at least the same tilts: compare those
                name = f"{TOMO}/{f.name[: -len(suffix)]}"
                both = vis_ref[name] & vis_mine[name]
                ref = ref[np.flatnonzero(both[vis_ref[name]])][..., 4:28, 4:28]
                mine = mine[np.flatnonzero(both[vis_mine[name]])]
            else:
                ref = ref[4:28, 4:28, 4:28]
            a, b = mine[..., region], ref[..., region]
            a, b = a - a.mean(), b - b.mean()
            corrs.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
            scales.append(float(a.ravel() @ b.ravel() / (b.ravel() @ b.ravel())))
        assert np.mean(corrs) > 0.98, (kind, np.round(corrs, 3))
        assert 0.95 < np.mean(scales) < 1.08, (kind, np.round(scales, 3))
