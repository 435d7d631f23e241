"""2D-stack particles turned into pseudo-subtomograms on load equal the extracted 3D ones."""

from __future__ import annotations

import numpy as np

from subtomo_nb.io.particles import read_particles
from subtomo_nb.io.subtomo import read_particle_subtomo
from subtomo_nb.io.tomograms import read_tomograms
from subtomo_nb.tasks.extract import stack2d_pseudo_subtomo
from subtomo_nb.tasks.reconstruct import reconstruct_particles
from subtomo_nb.tasks.tutorial import particles_with_truth
from subtomo_nb.fourier.fsc import fsc
from subtomo_nb.io.mrc import read_map


def test_stack2d_conversion_matches_3d_extraction(tiny_project, tiny_extract_2d, tiny_extract_3d):
    p2 = read_particles(tiny_extract_2d)
    p3 = read_particles(tiny_extract_3d)
    tset = read_tomograms(tiny_project["tomograms"])
    by_name = {n: i for i, n in enumerate(p3.particles["rlnTomoParticleName"].astype(str))}
    for i in (0, 7, 31):
        j = by_name[str(p2.particles["rlnTomoParticleName"].iloc[i])]
        a = stack2d_pseudo_subtomo(p2, tset, i)
        b = read_particle_subtomo(p3, j)
        # float16 files on both sides: agreement to their precision
        corr = np.corrcoef(a.data.ravel(), b.data.ravel())[0, 1]
        assert corr > 0.999, corr
        np.testing.assert_allclose(a.ctf2, b.ctf2, rtol=2e-3, atol=2e-3 * b.ctf2.max())
        np.testing.assert_allclose(a.multiplicity, b.multiplicity, rtol=2e-3, atol=2e-3 * b.multiplicity.max())


def test_tilt_image_size_reads_each_header_once(tiny_project, tiny_extract_2d, monkeypatch):
    import subtomo_nb.tasks.extract as extract

    calls = []
    read_header = extract.read_header
    monkeypatch.setattr(extract, "read_header", lambda path: calls.append(str(path)) or read_header(path))
    extract._image_size_of.cache_clear()
    p2 = read_particles(tiny_extract_2d)
    tset = read_tomograms(tiny_project["tomograms"])
    for i in range(4):
        stack2d_pseudo_subtomo(p2, tset, i)
    names = set(p2.particles["rlnTomoName"].iloc[:4].astype(str))
    assert len(calls) == len(set(calls)) == len(names), calls       # one header per tilt-series file


def test_reconstruct_from_2d_stacks(tiny_project, tiny_extract_2d, tmp_path):
    star = particles_with_truth(tiny_extract_2d, tiny_project["particles_true"],
                                tiny_extract_2d.parent.parent / "job_truth2d" / "particles_true.star", seed=0)
    res = reconstruct_particles(star, tmp_path / "merged.mrc", sym="C6", tomograms=tiny_project["tomograms"])
    rec, _ = read_map(res.merged_path)
    truth, _ = read_map(tiny_project["map"])
    mask, _ = read_map(tiny_project["mask"])
    f = np.asarray(fsc(rec, truth, mask))
    assert f[1:13].min() >= 0.9, np.round(f, 3)
