"""Absolute-scale conformance of auto-refine's first iteration with RELION 5's own (issue 14).

FSC-based checks do not see scale errors (a 2x back-projected weight, a 10x noise spectrum).
These tests run our first iteration on ``pseudo_subtomos_c4/`` with the options of RELION's run
in ``refine_outputs_c4/`` (reference README: ``--auto_refine --split_random_halves --ref
reference_lp40.mrc --ini_high 40 --pad 2 --ctf --particle_diameter 150 --flatten_solvent
--zero_mask --oversampling 1 --healpix_order 2 --auto_local_healpix_order 4 --offset_range 5
--offset_step 2 --sym C4 --low_resol_join_halves 40``, the same half-sets: ``particles.star``
carries RELION's ``rlnRandomSubset``) and compare absolute numbers of ``run_it001_half1_model.star``.

Our poses after iteration 1 are not RELION's (RELION's random perturbation of the sampling, its
``rlnAveragePmax`` 0.08 vs ours 0.53, its FSC lower), so only quantities that do not depend on
the exact poses are compared tightly:

* ``rlnReferenceSigma2`` = count / sum(pad³ W) per shell: the back-projected weights summed over a
  shell. A rotation moves weight within its shell, so this is nearly pose-independent; it scales
  with the weights and with 1 / (the E-step's noise spectrum). Measured ours / RELION, shells
  0-16: 0, 0.060, 0.095, 0.164, 0.257, 0.334, 0.465, 0.617, 0.968, 1.301, 1.344, 1.578, 1.281,
  1.897, 1.430, 1.874, (RELION 0): median over shells 8-15 = 1.39. Known discrepancy, not
  fixed here: at low shells our weights are up to 16x RELION's, because our initial noise
  estimate (``initial_sigma2``) divides the particles' power by the multiplicity while RELION's
  implied E-step noise matches the power per voxel *without* the multiplicity within 0.97-1.3
  at shells 1-7 (mean multiplicity there 16 -> 3).
* ``rlnSigma2Noise`` after the first E-step: residual power, which depends on the poses at low
  resolution only. Measured ours / RELION, shells 1-16: 0.54, 0.40, 0.34, 0.35, 0.97, 1.52,
  1.64, 2.10, 2.75, 2.51, 2.47, 2.57, 2.76, 2.40, 2.91, 1.81 (known, unexplained factor ~2.5 at
  high resolution, where the residual is the data's power whatever the poses).
* Low-resolution amplitude of our iteration-1 half maps against ``relion_reconstruct`` of the same
  particles with their true poses (RELION's map, reference README): at shells 1-4 (192-48 Å) the
  poses of iteration 1 are good enough (FSC with the truth ~1) and the regularisation negligible,
  so the ratio is the weight scale of the M-step. Measured (half1, half2): 0.98/1.01, 1.08/1.09,
  0.98/0.98, 0.96/0.97.
* tau2 / SSNR given an FSC: RELION's ``rlnSsnrMap`` and ``rlnReferenceTau2 / rlnReferenceSigma2``
  are both f / (1 - f) of its own ``rlnGoldStandardFsc`` (f clamped to [0.001, 0.999]); our
  ``ssnr_tau2_from_fsc`` on RELION's FSC column reproduces them (scale-free, but ties the
  absolute tau2 to the absolute ReferenceSigma2 checked above).

Mutations applied by hand to check that these tests bite (not committed), with the tests that
failed in this module and in tests/tasks (test_reconstruct_scale.py, test_reconstruct.py's
relion_reconstruct comparison):

===  ===================================================================================  ==============================================
 #   mutation                                                                             failing tests (measured value)
===  ===================================================================================  ==============================================
 a   refine/expectation.py mstep_sums ``weights = 2.0 * (per_particle @ (W * inv_noise))``  reference_sigma2 (median 0.694),
                                                                                          half_map_amplitude (0.48-0.54)
 b   fourier/backprojector.py:232-233 ``self.data += 2 * d...``, ``self.weight += 2 *``   reference_sigma2 (median 0.694)
 c1  refine/noise.py ``initial_sigma2``: ``return 10 * s2`` (E-step noise)                reference_sigma2 (13.9), sigma2_noise (shell 16:
                                                                                          18.1), half_map_amplitude (shell 4: 0.81)
 c2  refine/poses.py ``sigma2_from_sums``: ``10 * num / np.maximum(den, 1e-30)``          sigma2_noise (3.4-29)
===  ===================================================================================  ==============================================

(b) leaves every map unchanged (D and W doubled, tau2 halved with 1 / mean W, so D / (W + 1/tau2)
is the same): only the weight-derived tables show it; the reconstruct tests pass with it, as
they should. Shell 16 (Nyquist) keeps its initial noise value in iteration 1 (image size 30).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.fourier.fft import rfft3
from subtomo_nb.fourier.grid import shell_index
from subtomo_nb.fourier.reconstruct import ssnr_tau2_from_fsc
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star
from subtomo_nb.refine.autorefine import AutoRefine, RefineOptions
from tests._shared import relion_reference


@pytest.fixture(scope="module")
def first_iteration(tmp_path_factory) -> dict:
    """Our iteration 1 with RELION's options and half-sets (15-45 s, by machine load)."""
    ref = relion_reference()
    src = ref / "pseudo_subtomos_c4"
    out = Path(tmp_path_factory.mktemp("relion_scale"))
    opts = RefineOptions(particles=src / "optimisation_set.star", reference=src / "reference_lp40.mrc",
                         output_root=out / "run", ini_high=40, sym="C4", ctf=True, particle_diameter=150,
                         flatten_solvent=True, zero_mask=True, pad=2, healpix_order=2, auto_local_healpix_order=4,
                         offset_range_px=5, offset_step_px=2, low_resol_join_halves=40,
                         auto_ignore_angles=True, auto_resol_angles=True)
    job = AutoRefine.from_options(opts)
    relion_halves = read_star(ref / "refine_outputs_c4" / "run_it001_data.star")["particles"]["rlnRandomSubset"]
    assert (job.pset.particles["rlnRandomSubset"].to_numpy() == relion_halves.to_numpy()).all()
    job.iterate()
    return {
        "ours": read_star(out / "run_it001_half1_model.star"),
        "relion": read_star(ref / "refine_outputs_c4" / "run_it001_half1_model.star"),
        "halves": [read_map(out / f"run_it001_half{h}_class001.mrc")[0] for h in (1, 2)],
        "truth_rec": read_map(src / "relion_reconstruct_truth_C4.mrc")[0],
    }


def _col(blocks: dict, block: str, label: str) -> np.ndarray:
    return blocks[block][label].to_numpy(np.float64)


def test_reference_sigma2_absolute(first_iteration):
    """Back-projected weight per shell (rlnReferenceSigma2 = 1 / mean pad³W) on RELION's scale.

    Median ours/RELION over shells 8-15 (24-12.8 Å) within [0.8, 2.4]; measured 1.39, so a 2x
    weight (-> 0.69 or 2.8) or a 10x E-step noise (-> 13.9) fails.
    """
    ours = _col(first_iteration["ours"], "model_class_1", "rlnReferenceSigma2")
    relion = _col(first_iteration["relion"], "model_class_1", "rlnReferenceSigma2")
    assert (ours[1:16] > 0).all(), ours
    ratio = ours[8:16] / relion[8:16]
    med = float(np.median(ratio))
    assert 0.8 < med < 2.4, f"rlnReferenceSigma2 ours/RELION, shells 8-15: {np.round(ratio, 3)} (median {med:.3f})"
    # the written table is self-consistent: tau2 = SSNR * sigma2 of the reconstruction
    tau2 = _col(first_iteration["ours"], "model_class_1", "rlnReferenceTau2")
    ssnr = _col(first_iteration["ours"], "model_class_1", "rlnSsnrMap")
    np.testing.assert_allclose(tau2[1:16], ssnr[1:16] * ours[1:16], rtol=1e-4)


def test_sigma2_noise_absolute(first_iteration):
    """rlnSigma2Noise after iteration 1 within a factor 5 of RELION's per shell, median within 4x.

    Measured ours/RELION 0.34-2.91 per shell (shells 1-16), median 2.2: a 10x noise spectrum
    (-> 3.4-29) or a 10x too small one fails.
    """
    ours = _col(first_iteration["ours"], "model_optics_group_1", "rlnSigma2Noise")
    relion = _col(first_iteration["relion"], "model_optics_group_1", "rlnSigma2Noise")
    assert len(ours) == len(relion) == 17
    ratio = ours[1:17] / relion[1:17]
    msg = f"rlnSigma2Noise ours/RELION, shells 1-16: {np.round(ratio, 3)}"
    assert ((ratio > 0.2) & (ratio < 5.0)).all(), msg
    assert 0.5 < float(np.median(ratio)) < 4.0, msg


def test_half_map_amplitude_matches_relion_reconstruct(first_iteration):
    """Iteration-1 half maps have relion_reconstruct's absolute amplitude at 192-48 Å (within 15 %).

    Radial amplitude ratio per shell 1-4 against ``relion_reconstruct_truth_C4.mrc``; measured
    0.96-1.09. A 2x M-step weight halves the map (-> ~0.5).
    """
    sh = shell_index(first_iteration["truth_rec"].shape[0]).ravel()

    def amplitude(vol):
        power = np.abs(rfft3(np.asarray(vol, np.float64))) ** 2
        return np.sqrt(np.bincount(sh, power.ravel(), minlength=17)[:17] / np.bincount(sh, minlength=17)[:17])

    truth = amplitude(first_iteration["truth_rec"])
    for h, vol in enumerate(first_iteration["halves"], start=1):
        ratio = amplitude(vol)[1:5] / truth[1:5]
        assert ((ratio > 0.85) & (ratio < 1.15)).all(), f"half{h} amplitude / relion_reconstruct, shells 1-4: {ratio}"


def test_ssnr_and_tau2_from_relion_fsc():
    """RELION's rlnSsnrMap and tau2 / ReferenceSigma2 are our ssnr_tau2_from_fsc of its own FSC."""
    model = read_star(relion_reference() / "refine_outputs_c4" / "run_it001_half1_model.star")
    fsc = _col(model, "model_class_1", "rlnGoldStandardFsc")
    ssnr_relion = _col(model, "model_class_1", "rlnSsnrMap")
    tau2 = _col(model, "model_class_1", "rlnReferenceTau2")
    sig2 = _col(model, "model_class_1", "rlnReferenceSigma2")
    box, pad = 32, 2
    weight = np.ones((pad * box, pad * box, pad * box // 2 + 1))
    ours = ssnr_tau2_from_fsc(fsc, weight, box, pad, box // 2, 1.0)
    # RELION writes 6 digits: an FSC of 0.997167 is known to 5e-7, i.e. f / (1 - f) to 2e-4;
    # its shells at the 0.999 clamp read 999.0129 (data_vs_prior averaged over the shell)
    np.testing.assert_allclose(ours.ssnr, ssnr_relion, rtol=5e-4)
    ok = sig2 > 0
    np.testing.assert_allclose(ours.ssnr[ok], tau2[ok] / sig2[ok], rtol=5e-4)
    # a uniform weight w gives sigma2 = 1 / (pad³ w) in every shell the padded grid covers
    np.testing.assert_allclose(ours.sigma2[:box // 2], 1.0 / pad ** 3, rtol=1e-12)
