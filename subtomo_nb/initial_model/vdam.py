"""3D initial reference by VDAM: ``relion_refine --grad --denovo_3dref`` for pseudo-subtomograms.

The tomography "3D initial reference" job (relion-conventions.md §8, §10.2) grows a map from the
particles alone:

1. **Start** (§8.6): the first ``max(5 K, 10 n_optics)`` particles back-projected at random
   orientations, reconstructed without regularisation and low-passed to the resolution of shell
   ``round(0.07 N)``; noise spectrum from the first particles (as auto-refine).
2. **Each of ``--iter`` mini-batch iterations** (:mod:`.schedules`, §8.2-§8.3): a shuffled
   mini-batch (seed ``random_seed + iteration``), its size, step size and T from the schedules;
   every 10th iteration the angular accuracy is estimated and auto-sampling may go one HEALPix
   order finer (never to local searches, §8.6).
3. **E-step** (:func:`~subtomo_nb.refine.expectation.expectation_batch`, run by the executor
   passed in: serial by default, on dask when the job layer passes one): one reference per class, the mini-batch split into two pseudo
   half-sets by particle index parity, each back-projected into its own
   :class:`~subtomo_nb.fourier.backprojector.BackProjector`; at most ``100 K`` significant
   coarse poses per particle go to the oversampled pass (§8.4, ``max_significant``).
4. **M-step** (:mod:`.gradient`, §8.5): symmetry on the sums, gradients ``(D - W P)/max(1, W)``,
   adaptive moments, ``P <- P + step (f d - (1 - f) P)``, map, solvent flattening; noise
   spectrum, offset width and class shares with momentum 0.9 while mini-batches are subsets.
5. **Resolution** (§8.6): SSNR ``mean(W) T τ²`` × average CTF², first shell below 1; current
   image size ``2 (maxres + 10)``.
6. **Outputs** (:mod:`.outputs`) every ``--grad_write_iter`` (10) iterations and at the last:
   ``run_itNNN_classKKK.mrc``, ``run_itNNN_data.star``, ``_model.star``, ``_optimiser.star``;
   then ``initial_model.mrc`` (``relion_align_symmetry --select_largest_class --apply_sym``
   with the target group when run in C1, else a copy) and ``run_optimisation_set.star``.

Backend: the class references, their moments and the back-projected sums are arrays of the
job's backend (``opts.backend``: numpy, cupy or the strict test device) and stay there between
mini-batches; the M-step runs there. Only per-shell curves and scalars (the FSC estimate, τ²,
SSNR, the average CTF²), per-particle results and the maps written to disk come to the host.

``opts.fast`` (``--fast``, not RELION's) changes the image size, the last HEALPix order and the
mini-batch sizes by the rules of :mod:`.fast`; without it every step above is RELION's.

With K > 1 classes each particle of the mini-batch is scored against every class and
back-projected into the most likely one (hard assignment weighted by the class shares; RELION
uses the soft class posteriors, which the shared E-step cannot yet weight per particle).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.filters import low_pass
from subtomo_nb.fourier.masks import soft_sphere
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.healpix import angular_step
from subtomo_nb.geometry.symmetry import point_group
from subtomo_nb.initial_model.fast import FastSearch
from subtomo_nb.initial_model.gradient import (
    GradientMoments,
    gradient,
    map_from_transform,
    reference_transform,
    resolution_shell,
    vdam_ssnr,
    vdam_update,
)
from subtomo_nb.initial_model.schedules import (
    iteration_budget,
    step_size,
    subset_size,
    subset_sizes,
    tau2_fudge,
)
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.io.tomograms import TomogramSet
from subtomo_nb.refine.driver import PoseDriver, PoseOptions, PoseState
from subtomo_nb.refine.executor import EStepExecutor, HalfSetResult
from subtomo_nb.refine.expectation import MULTIPLICITY_THRESHOLD, without_ctf
from subtomo_nb.refine.poses import MASK_EDGE_PX, change_statistics, shell_of_resolution, sigma2_from_sums
from subtomo_nb.refine.sampling import Sampling, finer_translations

__all__ = ["InitialModel", "VdamOptions"]

#: RELION's incr_size: shells added to the current resolution for the image size.
INCR_SIZE = 10
#: Smallest current-resolution shell (RELION's minres_map).
MIN_RESOLUTION_SHELL = 5
#: Significant samples kept per particle and class in gradient runs (3D data; RELION).
MAX_SIGNIFICANT_PER_CLASS = 100
#: Auto-sampling and the accuracy estimate run every this many iterations.
AUTO_SAMPLING_EVERY = 10


@dataclass(kw_only=True)
class VdamOptions(PoseOptions):
    """Options of the tomo "3D initial reference" job (``relion_refine --grad --denovo_3dref``).

    RELION's flag names in the comments; angles in degrees, distances in Å unless the name
    says px; the options auto-refine shares are those of
    :class:`~subtomo_nb.refine.driver.PoseOptions` (``sym`` is the particle's point group,
    ``auto_local_healpix_order`` is never reached).
    """

    nr_iter: int = 200                            # --iter (number of VDAM mini-batches)
    tau2_fudge: float = 4.0                       # --tau2_fudge (regularisation parameter T)
    nr_classes: int = 1                           # --K
    run_in_c1: bool = True                        # "Run in C1 and apply symmetry later?" (--sym C1 + align_symmetry)
    ctf_intact_first_peak: bool = False           # --ctf_intact_first_peak
    n_workers: int = 1                            # --j
    # fixed by RELION's job (getCommandsInimodelJob); changeable for experiments
    healpix_order: int = 1                        # --healpix_order
    offset_range_px: float = 6.0                  # --offset_range
    pad: int = 1                                  # --pad
    grad_write_iter: int = 10                     # --grad_write_iter
    grad_ini_frac: float = 0.3                    # --grad_ini_frac
    grad_fin_frac: float = 0.2                    # --grad_fin_frac
    grad_ini_subset: int = -1                     # --grad_ini_subset (-1: RELION's rule)
    grad_fin_subset: int = -1                     # --grad_fin_subset
    grad_stepsize: float = 0.5                    # --grad_stepsize
    grad_stepsize_inflate: float = 1.8            # --grad_stepsize_scheme "<0.9/base>-step"
    mu: float = 0.9                               # --mu
    max_significant: int = -1                     # --maxsig (-1: 100 K)
    project_dir: str | os.PathLike | None = None  # file names in the STAR outputs are relative to it
    fast: bool = False                            # --fast (subtomo_nb's own accelerated search, :mod:`.fast`)

    @property
    def run_sym(self) -> str:
        """Point group applied during VDAM (``--sym``): C1 when run in C1."""
        return "C1" if self.run_in_c1 else self.sym


@dataclass(kw_only=True)
class VdamState(PoseState):
    """What the run keeps between iterations (RELION's model and optimiser state)."""

    subset: int = 0
    step: float = 0.0
    tau2_fudge: float = 1.0


@dataclass
class ClassModel:
    """One class: its map and moments (arrays of the job's backend) and per-shell statistics (host)."""

    reference: Any
    moments: GradientMoments | None = None
    pdf: float = 1.0
    ssnr: np.ndarray | None = None
    tau2: np.ndarray | None = None
    fsc_estimate: np.ndarray | None = None
    estimated_resolution: float = 999.0
    n_particles: int = 0


class InitialModel(PoseDriver):
    """A running VDAM initial model (one object per job; :meth:`run` does every iteration).

    Parameters
    ----------
    opts
        The job's options.
    progress
        Called with a dict per event (``kind`` = ``"iteration"``, ``"particles"`` (the
        particles of the mini-batch done so far, ``done`` of ``of``), ``"message"``).
    executor
        Runs the E-steps (:class:`~subtomo_nb.refine.executor.EStepExecutor`); default serial.

    Raises
    ------
    ValueError
        ``--iter`` or ``--K`` below 1; ``opts.fast`` with a ``grad_fin_subset`` > 0 (``--fast``
        keeps the mini-batches at their initial size: a final size would be silently ignored) or
        with a starting ``healpix_order`` above ``--fast``'s last order (2).
    InputError
        Fewer than 2 particles.
    """

    def __init__(self, opts: VdamOptions, particles: ParticleSet, tomograms: TomogramSet | None,
                 progress: Callable[[dict], None] | None = None, executor: EStepExecutor | None = None) -> None:
        if opts.nr_iter < 1:
            raise ValueError(f"--iter must be at least 1, got {opts.nr_iter}")
        if opts.nr_classes < 1:
            raise ValueError(f"--K must be at least 1, got {opts.nr_classes}")
        if opts.fast and opts.grad_fin_subset > 0:
            raise ValueError(f"--grad_fin_subset {opts.grad_fin_subset} cannot be used with --fast: --fast keeps every "
                             "mini-batch at its initial size (--grad_ini_subset), so a final size would be ignored; "
                             "leave out --grad_fin_subset, or run without --fast (RELION's search)")
        if opts.fast and opts.healpix_order > FastSearch.max_healpix_order:
            raise ValueError(f"--healpix_order {opts.healpix_order} cannot be used with --fast: --fast searches at "
                             f"HEALPix order {FastSearch.max_healpix_order} at most")
        super().__init__(opts, particles, tomograms, progress, executor)
        self.ops = point_group(opts.run_sym)
        point_group(opts.sym)  # fail early on an unknown target group
        self.budget = iteration_budget(opts.nr_iter, opts.grad_ini_frac, opts.grad_fin_frac)
        tab = self.pset.particles
        self.n = n = len(tab)
        if n < 2:
            raise InputError(what="VDAM needs at least 2 particles (two pseudo half-sets)", path=self.pset.path)
        self.classes = np.ones(n, dtype=np.int64)
        if self.radius_px + MASK_EDGE_PX > self.box / 2 + 1e-6 and opts.particle_diameter > 0:
            self.progress({"kind": "message", "message": f"mask diameter {opts.particle_diameter:g} Å "
                           f"reaches beyond the box ({self.box * self.pix:.0f} Å)"})
        # the solvent mask goes to the device once per job
        self.mask = self.backend.to_device(soft_sphere(self.box, self.radius_px, MASK_EDGE_PX), "metadata")
        ini_shell = max(math.floor(0.07 * self.box + 0.5), 1)
        self.ini_high = self.box * self.pix / ini_shell
        sampling = Sampling(healpix_order=opts.healpix_order, offset_range_A=opts.offset_range_px * self.pix,
                            offset_step_A=opts.offset_step_px * self.pix, sym=opts.run_sym,
                            sigma_tilt=opts.sigma_tilt if opts.sigma_tilt > 0 else 0.0)
        self.state = VdamState(iteration=0, sampling=sampling, current_resolution=self.ini_high)
        self.classes_model: list[ClassModel] = []
        self.sigma2 = np.zeros(self.box // 2 + 1)
        self.avg_ctf2 = 1.0
        self.timings: dict[str, float] = {}
        #: the rules of --fast (None: RELION's search)
        self.fast: FastSearch | None = None
        if opts.fast:
            ini = min(subset_sizes(n, opts.grad_ini_subset, opts.grad_fin_subset)[0], n)
            self.fast = FastSearch(subset=ini)

    def fast_changes(self) -> list[str]:
        """What ``--fast`` changed, one line each (empty without it)."""
        if self.fast is None:
            return []
        o = self.opts
        ini, fin = (min(x, self.n) for x in subset_sizes(self.n, o.grad_ini_subset, o.grad_fin_subset))
        return self.fast.describe(relion_subset=(ini, fin), relion_max_order=o.auto_local_healpix_order - 1,
                                  box=self.box, pixel_size_A=self.pix)

    @classmethod
    def from_options(cls, opts: VdamOptions, progress: Callable[[dict], None] | None = None,
                     executor: EStepExecutor | None = None) -> "InitialModel":
        """Read and check the particle and tomogram sets ``opts`` names, then build the job."""
        particles, tomograms = cls.read_particles(opts)
        return cls(opts, particles, tomograms, progress=progress, executor=executor)

    # ------------------------------------------------------------------ data
    @property
    def max_significant(self) -> int:
        """Cap on the significant poses per particle (``--maxsig``, default 100 K)."""
        o = self.opts
        return o.max_significant if o.max_significant > 0 else MAX_SIGNIFICANT_PER_CLASS * o.nr_classes

    def _transforms(self, rows: np.ndarray) -> tuple[Any, Any, Any | None]:
        """Transforms of ``rows`` shifted by their current offsets, CTF² (ones without --ctf), multiplicities.

        Arrays of the job's backend: the transform cache's device copies (each particle copied
        there once, as ``"particles"``, when it is first read), shifted there.
        """
        data, ctf2, mult = self.source.transforms.shifted(rows, self.poses.offsets_A[rows] / self.pix)
        if not self.opts.ctf:
            ctf2 = without_ctf(ctf2, mult)
        return data, ctf2, mult

    # ------------------------------------------------------------------ start
    def _initial_sigma2_and_ctf2(self) -> None:
        """Noise spectrum from the first particles (as auto-refine) and their average CTF² per multiplicity."""
        from subtomo_nb.refine.noise import N_SIGMA2_PARTICLES, initial_sigma2

        be = self.backend
        xp = be.xp
        rows = np.arange(self.n)
        # through the job's device-resident transforms: read and copied once, where the E-step finds them
        self.sigma2 = be.to_host(initial_sigma2(self.pset, rows, self.box, self.tomograms, self.dtype,
                                                transforms=self.source.transforms), "results")
        _, ctf2, mult = self._transforms(rows[:N_SIGMA2_PARTICLES])
        if mult is None:
            mult = xp.ones_like(ctf2)
        ok = mult > MULTIPLICITY_THRESHOLD
        if not bool(xp.any(ok)):
            self.avg_ctf2 = 1.0
            return
        # sums in the data's precision, divided in it (as numpy's float32 scalars did)
        total_ctf2, total_mult = xp.sum(ctf2[ok]), xp.sum(mult[ok])
        self.avg_ctf2 = float(total_ctf2 / total_mult if float(total_mult) > 1e-30 else total_ctf2 / 1e-30)

    def _initial_references(self) -> list[Any]:
        """Maps of the first ``max(5 K, 10 n_optics)`` particles at random orientations (§8.6).

        Back-projected and reconstructed on the job's backend; the maps stay there.
        """
        from subtomo_nb.initial_model.align_symmetry import random_orientations

        o = self.opts
        be = self.backend
        xp = be.xp
        K = o.nr_classes
        n_ini = min(max(5 * K, 10 * len(self.pset.optics)), self.n)
        rows = np.arange(n_ini)
        angles = random_orientations(n_ini, np.random.default_rng(o.random_seed))
        data, ctf2, mult = self._transforms(rows)
        if mult is not None:
            ctf2 = xp.astype(xp.where(mult > MULTIPLICITY_THRESHOLD, ctf2, 0.0), ctf2.dtype)
        refs = []
        for k in range(K):
            sel = np.flatnonzero(rows % K == k)
            bp = BackProjector(self.box, pad=o.pad, dtype=np.float64, backend=be)
            A = be.to_device(euler_to_matrix(*angles[sel].T), "metadata")
            if len(sel) == n_ini:
                bp.insert3d(A, data, ctf2)
            else:
                idx = be.to_device(sel, "metadata")
                bp.insert3d(A, xp.take(data, idx, axis=0), xp.take(ctf2, idx, axis=0))
            vol = xp.astype(bp.reconstruct(), xp.float64)
            refs.append(low_pass(vol, self.ini_high, self.pix))
        return refs

    # ------------------------------------------------------------------ sizes and sampling
    def _update_size(self) -> None:
        s = self.state
        maxres = shell_of_resolution(s.current_resolution, self.box, self.pix)
        if self.fast is not None:
            s.current_size = self.fast.image_size(maxres, self.box, self.pix)
            return
        s.current_size = int(min(2 * (maxres + INCR_SIZE), self.box))

    def _auto_sampling(self) -> None:
        """One HEALPix order finer when the accuracy allows it (§6.11), never to local searches (§8.6).

        As RELION's ``updateAngularSampling`` for gradient runs, at the last global order the
        translations still follow the accuracy while the HEALPix order stays.
        """
        s, o = self.state, self.opts
        smp = s.sampling
        order = smp.healpix_order + 1
        if order >= o.auto_local_healpix_order or (self.fast is not None and order > self.fast.max_healpix_order):
            order = smp.healpix_order
        # the initial-model job passes no --auto_resol_angles: only a stalled resolution lets it go on
        if s.nr_iter_wo_resol_gain < 1:
            return
        if smp.fine_step < 0.75 * s.acc_rot:
            s.has_fine_enough_sampling = True
            return
        # translations (§6.11): finer step from the accuracy, range from the last offset changes
        step_A, range_A = finer_translations(smp.offset_step_A, smp.offset_range_A, s.acc_trans_A,
                                             s.change_offsets_A, smp.oversampling)
        s.sampling = smp.with_(healpix_order=order, offset_step_A=step_A, offset_range_A=range_A)
        s.nr_iter_wo_resol_gain = 0
        self.progress({"kind": "message", "message": f"iteration {s.iteration}: HEALPix order {order} "
                       f"({angular_step(order, smp.oversampling):g}° fine), offsets {range_A / self.pix:.1f} px "
                       f"in {step_A / self.pix:.2f} px"})

    def _estimate_accuracy(self) -> None:
        from subtomo_nb.refine.accuracy import estimate_accuracy

        xp = self.backend.xp
        best = int(np.argmax([c.pdf for c in self.classes_model]))
        proj = Projector(xp.astype(self.classes_model[best].reference, self.backend.dtype(self.dtype)), pad=self.opts.pad)
        rng = np.random.default_rng(self.opts.random_seed + 7919 * self.state.iteration)
        # the job's device-resident transforms: no particle is read or copied again
        self.state.acc_rot, self.state.acc_trans_A = estimate_accuracy(
            proj, self.source.transforms, np.arange(self.n), self.poses.angles, self.sigma2, self.box, self.pix,
            self.state.current_size, self.tomograms, rng, self.dtype)

    # ------------------------------------------------------------------ E-step
    def _r_max(self) -> int:
        return self.state.current_size // 2

    def _estep(self, reference: Any, halves: list[np.ndarray], back_project: bool = True
               ) -> list[HalfSetResult]:
        """E-step of one class's reference on two pseudo half-sets (one reference: shared projector and cache)."""
        settings = self.estep_settings(self.state.current_size / 2, max_significant=self.max_significant)
        return self.run_estep(self.estep_request(halves, [reference, reference], [self.sigma2, self.sigma2], settings,
                                                 self._r_max(), back_project=back_project))

    # ------------------------------------------------------------------ one iteration
    def subset_of(self, iteration: int) -> int:
        """Mini-batch size of ``iteration`` (RELION's schedule, or the --fast size; at most every particle)."""
        o = self.opts
        if self.fast is not None and self.fast.subset is not None:
            return min(self.fast.subset, self.n)
        return subset_size(iteration, self.budget, self.n, o.grad_ini_subset, o.grad_fin_subset)

    def _mini_batch(self) -> np.ndarray:
        """Rows of this iteration's mini-batch (all particles, sorted, when the size reaches them)."""
        s, o = self.state, self.opts
        s.subset = self.subset_of(s.iteration)
        if s.subset >= self.n:
            return np.arange(self.n)
        order = np.random.default_rng(o.random_seed + s.iteration).permutation(self.n)
        return np.sort(order[: s.subset])

    def _assign_classes(self, rows: np.ndarray, halves: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Per class, the two half-sets of the particles it receives (all of them when K = 1)."""
        K = len(self.classes_model)
        if K == 1:
            self.classes[rows] = 1
            return [halves]
        score = np.full((self.n, K), -np.inf)
        for k, cm in enumerate(self.classes_model):
            for half in self._estep(cm.reference, halves, back_project=False):
                for idx, res in half.batches:
                    ll = self.backend.to_host(res.log_likelihood, "results")
                    score[idx, k] = ll + math.log(max(cm.pdf, 1e-30))
        best = np.argmax(score[rows], axis=1)
        self.classes[rows] = best + 1
        return [[h[self.classes[h] == k + 1] for h in halves] for k in range(K)]

    def iterate(self) -> dict:
        """Run the next mini-batch iteration; returns its progress event.

        The M-step runs on the job's backend: the back-projected sums, the reference transform,
        the gradients, the moments and the new map stay there; the FSC estimate, τ² and SSNR
        curves come to the host (``"results"``).
        """
        s, o = self.state, self.opts
        be = self.backend
        xp = be.xp
        s.iteration += 1
        t0 = time.perf_counter()
        s.step = step_size(s.iteration, self.budget, o.grad_stepsize, o.grad_stepsize_inflate)
        s.tau2_fudge = tau2_fudge(s.iteration, self.budget, o.tau2_fudge)
        if s.iteration > 1 and s.iteration % AUTO_SAMPLING_EVERY == 0:
            self._estimate_accuracy()
            self._auto_sampling()
        self._update_size()
        rows = self._mini_batch()
        halves = [rows[rows % 2 == 0], rows[rows % 2 == 1]]
        uses_subset = len(rows) < self.n
        mu = o.mu if uses_subset else 0.0
        before = self.poses.copy_poses()
        t_e = time.perf_counter()
        per_class = self._assign_classes(rows, halves)
        num = np.zeros(self.box // 2 + 1)
        den = np.zeros(self.box // 2 + 1)
        r_max = self._r_max()
        new_refs = []
        t_m = 0.0
        for k, cm in enumerate(self.classes_model):
            class_halves = per_class[k]
            cm.n_particles = int(sum(len(h) for h in class_halves))
            if cm.n_particles < 2 or min(len(h) for h in class_halves) == 0:
                new_refs.append(cm.reference)  # an empty class keeps its map
                continue
            estep = self._estep(cm.reference, class_halves)
            tm = time.perf_counter()
            for half in estep:
                self.poses.apply(half.batches, num, den)
            bps = [half.backprojector for half in estep]
            for bp in bps:
                bp.symmetrise(self.ops)
            P = reference_transform(cm.reference, o.pad, r_max)
            grads = tuple(gradient(bp.data, bp.weight, P, o.pad, r_max) for bp in bps)
            if cm.moments is None:
                cm.moments = GradientMoments.zeros(tuple(P.shape), be)
            K = len(self.classes_model)
            class_step = s.step * (1.0 - math.exp(-(3 * K + 10) * cm.pdf))
            upd = vdam_update(P, grads, cm.moments, pad=o.pad, r_max=r_max, box=self.box, tau2_fudge=s.tau2_fudge,
                              step=class_step, mu=o.mu)
            cm.fsc_estimate = be.to_host(upd.fsc_estimate, "results")
            tau2 = Projector(cm.reference, pad=o.pad, r_max=r_max).power_spectrum
            ssnr = vdam_ssnr(bps[0].weight + bps[1].weight, tau2, pad=o.pad, r_max=r_max, box=self.box,
                             tau2_fudge=s.tau2_fudge, avg_ctf2=self.avg_ctf2)
            cm.tau2, cm.ssnr = be.to_host(tau2, "results"), be.to_host(ssnr, "results")
            vol = map_from_transform(upd.transform, self.box, o.pad, r_max)
            if o.flatten_solvent:
                vol = vol * self.mask
            new_refs.append(vol)
            t_m += time.perf_counter() - tm
        t_e = time.perf_counter() - t_e - t_m
        for cm, vol in zip(self.classes_model, new_refs):
            cm.reference = xp.astype(vol, xp.float64)
        self._update_model(rows, num, den, mu, before)
        s.history.append(event := self._event(time.perf_counter() - t0, t_e, t_m))
        self.progress(event)
        return event

    def _update_model(self, rows: np.ndarray, num: np.ndarray, den: np.ndarray, mu: float,
                      before: tuple[np.ndarray, np.ndarray]) -> None:
        """Noise, offset width, class shares (momentum ``mu``), resolution and hidden-variable changes."""
        s = self.state
        new = sigma2_from_sums(num, den, self.sigma2)
        self.sigma2 = mu * self.sigma2 + (1.0 - mu) * new
        s2_off = max(float(np.mean(np.sum(self.poses.offsets_A[rows] ** 2, axis=1))) / 3.0, 2.0)
        s.sigma_offset_A = math.sqrt(mu * s.sigma_offset_A ** 2 + (1.0 - mu) * s2_off)
        counts = np.array([np.sum(self.classes[rows] == k + 1) for k in range(len(self.classes_model))], float)
        for cm, c in zip(self.classes_model, counts / max(counts.sum(), 1.0)):
            cm.pdf = mu * cm.pdf + (1.0 - mu) * float(c)
        # resolution: the best class's first shell with SSNR < 1 (§8.6)
        shells = [resolution_shell(cm.ssnr, MIN_RESOLUTION_SHELL) for cm in self.classes_model if cm.ssnr is not None]
        for cm in self.classes_model:
            if cm.ssnr is not None:
                above = np.flatnonzero(cm.ssnr >= 1.0)
                cm.estimated_resolution = (self.box * self.pix / above[-1]) if above.size and above[-1] > 0 else 999.0
        if shells:
            s.record_resolution(self.box * self.pix / max(shells))
        s.change_orientations, s.change_offsets_A = change_statistics(*self.poses.changes(rows, before, self.ops))
        s.ave_pmax = float(self.poses.stats["rlnMaxValueProbDistribution"].to_numpy()[rows].mean())
        s.log_likelihood = float(self.poses.stats["rlnLogLikeliContribution"].to_numpy()[rows].sum())

    def _event(self, seconds: float, t_estep: float, t_mstep: float) -> dict:
        s = self.state
        best = int(np.argmax([c.pdf for c in self.classes_model]))
        f = self.classes_model[best].fsc_estimate
        return {"kind": "iteration", "iteration": s.iteration, "resolution_A": s.current_resolution,
                "fsc": [] if f is None else [float(x) for x in f], "subset": s.subset, "step": s.step,
                "tau2_fudge": s.tau2_fudge, "healpix_order": s.sampling.healpix_order, "acc_rot": s.acc_rot,
                "acc_trans_A": s.acc_trans_A, "current_size": s.current_size,
                "class_distribution": [c.pdf for c in self.classes_model],
                "changes_orientations": s.change_orientations, "changes_offsets_A": s.change_offsets_A,
                "seconds": seconds, "seconds_estep": t_estep, "seconds_mstep": t_mstep}

    # ------------------------------------------------------------------ the whole job
    def start(self) -> None:
        """Noise estimate and initial references (iteration 0)."""
        self._initial_sigma2_and_ctf2()
        K = self.opts.nr_classes
        self.classes_model = [ClassModel(reference=r, pdf=1.0 / K) for r in self._initial_references()]
        self.classes[:] = np.arange(self.n) % K + 1

    def run(self) -> dict:
        """Start, iterate ``--iter`` times, write the outputs; returns the last iteration's event.

        The written files are listed in ``self.outputs`` (name -> path).
        """
        from subtomo_nb.initial_model.outputs import finish_job, write_iteration

        o = self.opts
        try:
            self.start()
            write_iteration(self)
            while self.state.iteration < o.nr_iter:
                self.iterate()
                it = self.state.iteration
                if it == o.nr_iter or (o.grad_write_iter > 0 and it % o.grad_write_iter == 0):
                    write_iteration(self)
            self.outputs = finish_job(self)
        finally:
            self.executor.release()
        return self.state.history[-1] if self.state.history else {}
