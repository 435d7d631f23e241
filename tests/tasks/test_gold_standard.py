"""Acceptance: with noise, the gold-standard FSC predicts the FSC against the truth.

For a map made of two independent half-maps, FSC_true(merged vs truth) ≈ sqrt(2 FSC / (1 + FSC))
where FSC is the half-map FSC (relion-conventions.md §9). Checked within 0.05 wherever FSC > 0.2.

The check needs a ground truth equal to the whole content of the particle box, so the lattice is
sparse, as the tutorial dataset's (spacing 260 Å: the ~150 Å hexamers' neighbours are outside the
346 Å box) and the FSCs are unmasked: a tight mask inflates both FSCs by the mask's own spectrum (the
effect relion_postprocess corrects by phase randomisation).
"""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.fourier.fsc import fsc, fsc_true_from_half
from subtomo_nb.io.mrc import read_map
from subtomo_nb.simulate import simulate_project

#: Noise strong enough that the half-map FSC falls below 0.5 within the box (the relation is
#: tested over a range of FSC values); lower than the dataset's default.
SNR = 2e-4
from subtomo_nb.tasks.extract import extract_subtomos
from subtomo_nb.tasks.reconstruct import reconstruct_particles
from subtomo_nb.tasks.tutorial import particles_with_truth

#: One tomogram, two virions, isolated hexamers, the full ±60°/3° tilt series.
SPARSE = dict(n_tomograms=1, tomogram_size=(800, 800, 380), n_virions=2, radius_range_A=(380.0, 420.0),
              spacing_A=260.0, margin_A=60.0)


@pytest.fixture(scope="module")
def sparse_noisy_truth(tmp_path_factory):
    project = tmp_path_factory.mktemp("sparse_noisy")
    sim = simulate_project(project, seed=3, snr=SNR, **SPARSE)
    extracted = extract_subtomos(sim["optimisation_set"], None, project / "Extract" / "job002",
                                 binning=4, box=32, stack2d=False, n_workers=2)
    star = particles_with_truth(extracted, sim["particles_true"],
                                project / "Reconstruct" / "job003" / "particles_true.star", seed=3)
    return sim, star


def test_half_map_fsc_predicts_fsc_against_truth(sparse_noisy_truth):
    sim, star = sparse_noisy_truth
    res = reconstruct_particles(star, star.parent / "merged.mrc", sym="C6", n_workers=2)
    truth, _ = read_map(sim["map"])
    h1, _ = read_map(res.half_paths[0])
    h2, _ = read_map(res.half_paths[1])
    merged, _ = read_map(res.merged_path)
    f_half = np.asarray(fsc(h1, h2))
    f_truth = np.asarray(fsc(merged, truth))
    predicted = np.asarray(fsc_true_from_half(f_half))
    sel = f_half > 0.2
    sel[0] = False
    assert sel.sum() >= 5, f"too few shells with FSC > 0.2: {np.round(f_half, 3)}"
    assert (f_half[1:] < 0.5).any(), f"the noise is too weak to test the relation: {np.round(f_half, 3)}"
    dev = np.abs(predicted[sel] - f_truth[sel])
    assert dev.max() < 0.05, (
        f"max |sqrt(2F/(1+F)) - FSC_true| = {dev.max():.3f}\nhalf  {np.round(f_half, 3)}\n"
        f"truth {np.round(f_truth, 3)}\npred  {np.round(predicted, 3)}")
