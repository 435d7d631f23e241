"""How well can any refinement orient these particles? Best poses against the ground-truth map.

Usage::

    python benchmarks/angular_error_oracle.py --project tut2 --model full/run_model.star \\
        [--order 5] [--sigma 6] [--sym C6]

Scores every particle of ``<project>/Extract/job002/particles.star`` against the project's
ground-truth map (``ground_truth/map_bin4.mrc``) at its true offsets, with a local search at
HEALPix order ``--order`` (coarse pass and oversampled fine pass, as auto-refine) and a Gaussian
prior of width ``--sigma`` degrees around the true orientation, using the noise power of a
refinement's ``run_model.star``. Prints the median angular error (modulo the symmetry) and
translation of the best poses: the error a refinement with a perfect reference would reach on
these data. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from subtomo_nb._memory import keep_freed_memory
    from subtomo_nb.fourier.projector import Projector
    from subtomo_nb.geometry.euler import angular_distance, euler_to_matrix
    from subtomo_nb.geometry.healpix import angular_step
    from subtomo_nb.geometry.symmetry import point_group
    from subtomo_nb.io.mrc import read_map
    from subtomo_nb.io.star import read_star
    from subtomo_nb.refine.expectation import EStepSettings, IterationCache, ParticleBatch, expectation_batch
    from subtomo_nb.refine.sampling import Sampling
    from subtomo_nb.tasks.particle_data import load_particle_set, particle_transforms

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="simulated project (subtomo tutorial)")
    ap.add_argument("--particles", type=Path, default=None, help="default <project>/Extract/job002/particles.star")
    ap.add_argument("--model", type=Path, required=True, help="run_model.star whose noise power is used")
    ap.add_argument("--order", type=int, default=5, help="HEALPix order of the local search")
    ap.add_argument("--sigma", type=float, default=6.0, help="prior width around the truth (degrees)")
    ap.add_argument("--sym", default="C6")
    args = ap.parse_args()
    keep_freed_memory()

    pset, tomo = load_particle_set(args.particles or args.project / "Extract" / "job002" / "particles.star")
    truth = read_star(args.project / "ground_truth" / "particles_true.star")["particles"]
    t = truth.set_index("rlnTomoParticleName").loc[pset.particles["rlnTomoParticleName"].astype(str)]
    ang = t[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    off = t[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(float)
    vol, pix = read_map(args.project / "ground_truth" / "map_bin4.mrc")
    N = vol.shape[0]
    proj = Projector(np.asarray(vol, np.float32), pad=2)
    g = read_star(args.model)["model_optics_group_1"]
    sigma2 = np.zeros(N // 2 + 1)
    sigma2[g["rlnSpectralIndex"].to_numpy(int)] = g["rlnSigma2Noise"].to_numpy(float)
    sigma2[sigma2 <= 0] = sigma2[sigma2 > 0].min()
    s = Sampling(healpix_order=args.order, offset_range_A=pix, offset_step_A=0.5 * pix, sym=args.sym,
                 sigma_rot=args.sigma, sigma_tilt=args.sigma, sigma_psi=args.sigma)
    rots, shifts = [], []
    for start in range(0, len(ang), 16):
        idx = np.arange(start, min(start + 16, len(ang)))
        data, ctf2, mult = particle_transforms(pset, idx, tomograms=tomo, dtype=np.float32, origins=off[idx] / pix)
        r = expectation_batch(proj, ParticleBatch.of(data, ctf2, mult), sigma2, s, ang[idx],
                              EStepSettings(pixel_size_A=pix, coarse_radius=N // 2, fine_radius=N // 2,
                                            sigma_offset_A=10.0), cache=IterationCache())
        rots.append(np.stack([r.rot, r.tilt, r.psi], axis=1))
        shifts.append(r.shift_px)
    A, At = euler_to_matrix(*np.concatenate(rots).T), euler_to_matrix(*ang.T)
    err = np.min([angular_distance(A, At @ S.T) for S in point_group(args.sym)], axis=0)
    sh = np.linalg.norm(np.concatenate(shifts), axis=1)
    print(f"{len(err)} particles, HEALPix order {args.order} (fine step {angular_step(args.order, 1):.3f}°), "
          f"prior {args.sigma}°: median angular error {np.median(err):.3f}° (p25 {np.percentile(err, 25):.3f}, "
          f"p75 {np.percentile(err, 75):.3f}); median translation {np.median(sh):.3f} px")


if __name__ == "__main__":
    main()
