"""3D auto-refine: ``relion_refine --auto_refine --split_random_halves`` for pseudo-subtomograms.

One iteration (relion-conventions.md §6):

1. convergence check (§6.13); the converged iteration becomes the final one (all data to Nyquist);
2. auto-sampling (§6.11): finer HEALPix order when the resolution and accuracy rules allow,
   local searches from ``--auto_local_healpix_order`` on;
3. E-step per half-set (:func:`subtomo_nb.refine.expectation.expectation_batch`), each half with
   its own reference, noise model and back-projector, never sharing data; run by the executor
   passed in (:class:`~subtomo_nb.refine.executor.SerialExecutor` by default, or
   ``subtomo_nb.parallel.DaskExecutor`` built by the job layer);
4. M-step: noise power per shell, symmetry, half-set FSC (joined below ``--low_resol_join_halves``),
   tau2/SSNR from the FSC, regularised reconstruction, solvent flattening;
5. resolution, image sizes, accuracies and hidden-variable changes for the next iteration;
6. RELION-named outputs (``run_itNNN_*``; final ``run_class001.mrc`` etc.), written only inside
   the output directory.

The numerical work is in the core modules; this module keeps the iteration state, the poses
in a :class:`~subtomo_nb.refine.poses.ParticlePoses`.

The iteration stays on the job's backend (``RefineOptions.backend``): the particles' transforms
are copied to the device once (the first iteration) and the half-set references, the
back-projector sums, the solvent mask and every step of the M-step (symmetry, the low-resolution
join, FSC, SSNR/tau2, reconstruction, low-pass, solvent flattening, the merged final map) stay
there. Only curves and scalars (FSC, SSNR, tau2, noise sums, per-particle results) and the maps
written to disk come to the host.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from subtomo_nb.backend import Backend
from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.filters import low_pass
from subtomo_nb.fourier.fsc import fsc as fsc_curve
from subtomo_nb.fourier.fsc import resolution
from subtomo_nb.fourier.grid import radius_grid
from subtomo_nb.fourier.masks import soft_sphere
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.healpix import angular_step
from subtomo_nb.geometry.symmetry import point_group
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.io.tomograms import TomogramSet
from subtomo_nb.refine.accuracy import estimate_accuracy
from subtomo_nb.refine.driver import PoseDriver, PoseOptions, PoseState
from subtomo_nb.refine.executor import EStepExecutor, EStepRequest, HalfSetResult
from subtomo_nb.refine.noise import initial_sigma2
from subtomo_nb.refine.outputs import write_iteration
from subtomo_nb.refine.poses import MASK_EDGE_PX, change_statistics, particle_radius_px, shell_of_resolution
from subtomo_nb.refine.poses import sigma2_from_sums
from subtomo_nb.refine.reference import check_reference_symmetry
from subtomo_nb.refine.sampling import Sampling, finer_translations
from subtomo_nb.tasks.reconstruct import common_box_and_pixel



@dataclass(kw_only=True)
class RefineOptions(PoseOptions):
    """The ``relion_refine`` options of the tomo 3D auto-refine job (flag names in comments).

    Angles in degrees, distances in Å unless the name says px; the options VDAM shares are
    those of :class:`~subtomo_nb.refine.driver.PoseOptions`.
    """

    reference: str | os.PathLike                  # --ref
    solvent_mask: str | os.PathLike | None = None  # --solvent_mask
    firstiter_cc: bool = False                    # --firstiter_cc
    ini_high: float = 60.0                        # --ini_high
    pad: int = 2                                  # --pad
    healpix_order: int = 2                        # --healpix_order
    offset_range_px: float = 5.0                  # --offset_range
    auto_ignore_angles: bool = False              # --auto_ignore_angles
    auto_resol_angles: bool = False               # --auto_resol_angles
    low_resol_join_halves: float = 40.0           # --low_resol_join_halves
    tau2_fudge: float = 1.0                       # --tau2_fudge
    auto_iter_max: int = 999                      # --auto_iter_max
    # not RELION's: put a reference whose symmetry is off the conventional axes onto them first
    # (subtomo_nb.refine.reference); "--no_align_ref_sym" in Additional arguments turns it off
    align_reference_symmetry: bool = True
    continue_from: str | os.PathLike | None = None  # --continue run_itNNN_optimiser.star
    # RELION's working directory: file names in the STAR outputs are relative to it (None: the current one)
    project_dir: str | os.PathLike | None = None


@dataclass
class HalfModel:
    """What each half-set keeps between iterations.

    ``reference`` is a device array of the job's backend (float64 ``(N, N, N)``); set it with
    :meth:`set_reference`. The curves are host arrays.
    """

    rows: np.ndarray
    reference: Any
    sigma2: np.ndarray
    tau2: np.ndarray | None = None
    ssnr: np.ndarray | None = None
    #: noise power of the reconstruction, count / sum(pad**3 W) per shell (rlnReferenceSigma2)
    ref_sigma2: np.ndarray | None = None
    _host: np.ndarray | None = field(default=None, repr=False)

    def set_reference(self, volume: Any, host: np.ndarray | None = None) -> None:
        """A new reference (device array); ``host``: its host copy where one is at hand."""
        self.reference = volume
        self._host = host

    def host_reference(self, backend: Backend) -> np.ndarray:
        """The reference on the host (copied once per reference, as ``"map"``: the map written to
        disk, and what the E-step's workers receive when they are other processes)."""
        if self._host is None:
            self._host = backend.to_host(self.reference, "map")
        return self._host


@dataclass(kw_only=True)
class RefineState(PoseState):
    """The optimiser state (what RELION writes in _optimiser.star, _model.star, _sampling.star)."""

    incr_size: int = 10
    has_high_fsc_at_limit: bool = False
    nr_iter_wo_hidden_changes: int = 0
    has_converged: bool = False
    smallest_change_orientations: float = 999.0
    smallest_change_offsets_A: float = 999.0
    fsc: np.ndarray | None = None


def _read_reference(path: str | os.PathLike, box: int, pix: float) -> np.ndarray:
    """The starting reference map (float64), checked against the particles' box and pixel size (Å)."""
    ref, ref_pix = read_map(path, require_cube=True)
    if ref.shape[0] != box:
        raise InputError(what=f"reference box {ref.shape[0]} differs from the particles' box {box}",
                         path=path, field="rlnImageSize")
    if ref_pix not in (0.0, 1.0) and abs(ref_pix - pix) > 1e-3 * pix:
        raise InputError(what=f"reference pixel size {ref_pix} Å differs from the particles' {pix} Å",
                         path=path, field="rlnImagePixelSize")
    return np.asarray(ref, dtype=np.float64)


def _read_solvent_mask(path: str | os.PathLike, box: int) -> np.ndarray:
    """The solvent mask of ``--solvent_mask``, checked: the particles' box, values in [0, 1]."""
    mask, _ = read_map(path, require_cube=True)
    if mask.shape[0] != box:
        raise InputError(what=f"mask box {mask.shape[0]} differs from the particles' box {box}",
                         path=path, field="rlnImageSize")
    if mask.min() < -1e-3 or mask.max() > 1 + 1e-3:
        raise InputError(what="solvent mask values must lie in [0, 1]", path=path)
    return np.clip(mask, 0, 1)


def _join_low_resolution(bps: list[BackProjector], shell: int, backend: Backend) -> list[BackProjector]:
    """Copies of the half back-projectors with data and weight averaged for |k| <= shell (§6.2), on the device."""
    xp = backend.xp
    low = radius_grid(bps[0].padded, xp=backend, device=backend.device) <= shell * bps[0].pad   # made there
    d = 0.5 * (bps[0].data + bps[1].data)
    w = 0.5 * (bps[0].weight + bps[1].weight)
    out = []
    for bp in bps:
        c = BackProjector(bp.box, pad=bp.pad, r_max=bp.r_max, dtype=bp.rdtype, backend=backend)
        c.data, c.weight = xp.where(low, d, bp.data), xp.where(low, w, bp.weight)
        out.append(c)
    return out


def _on_backend(bp: BackProjector, backend: Backend) -> BackProjector:
    """``bp`` with its sums on ``backend``'s device (copied as ``"sums"`` from an executor that
    returns them on the host, e.g. a dask cluster's; as they are otherwise)."""
    if backend.owns(bp.data):
        return bp
    c = BackProjector(bp.box, pad=bp.pad, r_max=bp.r_max, dtype=bp.rdtype, backend=backend)
    c.data, c.weight = backend.to_device(bp.data, "sums"), backend.to_device(bp.weight, "sums")
    return c


class AutoRefine(PoseDriver):
    """A running 3D auto-refine (one object per job; :meth:`run` iterates to convergence).

    Build it with :meth:`from_options` (which reads the files the options name); the
    constructor takes what was read and reads no file.

    Parameters
    ----------
    opts
        The job's options.
    particles, tomograms
        The particle set and its tomogram set (None for 3D pseudo-subtomograms).
    reference
        The starting reference map ``[z, y, x]``, at the particles' box and pixel size.
    solvent_mask
        The solvent mask (values in [0, 1]); None: a soft sphere of the particle diameter.
    progress
        Called with a dict per event (``kind`` = ``"iteration"``, ``"particles"`` (particles of the
        iteration done so far, ``done`` of ``of``), ``"message"``, ``"finished"``).
    executor
        Runs the E-steps (:class:`~subtomo_nb.refine.executor.EStepExecutor`); default serial.
    """

    def __init__(self, opts: RefineOptions, particles: ParticleSet, tomograms: TomogramSet | None,
                 reference: np.ndarray, *, solvent_mask: np.ndarray | None = None,
                 progress: Callable[[dict], None] | None = None, executor: EStepExecutor | None = None) -> None:
        super().__init__(opts, particles, tomograms, progress, executor)
        self.stop: dict = {}  # why the final iteration was final (set when it starts)
        self.ops = point_group(opts.sym)
        self.rng = np.random.default_rng(opts.random_seed)
        tab = self.pset.particles
        n = len(tab)
        if "rlnRandomSubset" not in tab.columns:
            tab = tab.copy()
            tab["rlnRandomSubset"] = self.rng.permutation(np.arange(n) % 2 + 1)
            self.pset.particles = tab
        subset = tab["rlnRandomSubset"].to_numpy()
        bad = ~np.isin(subset, (1, 2))
        if bad.any():
            raise InputError(what="rlnRandomSubset must be 1 or 2 for every particle", path=self.pset.path,
                             row=int(np.flatnonzero(bad)[0]) + 1, field="rlnRandomSubset")
        if self.poses.tilt_prior is None:
            self.poses.tilt_prior = self.poses.angles[:, 1].copy()
        ref = np.asarray(reference, dtype=np.float64)
        if opts.ini_high > 0:
            ref = low_pass(ref, opts.ini_high, self.pix)
        self.reference_check = None
        if opts.align_reference_symmetry and not opts.continue_from:
            self.reference_check = check_reference_symmetry(ref, opts.sym, self.pix, seed=opts.random_seed)
            ref = self.reference_check.volume
        mask = (np.clip(solvent_mask, 0, 1) if solvent_mask is not None
                else soft_sphere(self.box, particle_radius_px(opts.particle_diameter, self.box, self.pix),
                                 MASK_EDGE_PX))
        be = self.backend
        self.mask = be.to_device(mask, "map")   # the solvent mask, on the device once
        halves = [np.flatnonzero(subset == h) for h in (1, 2)]
        self.halves = []
        for r in halves:
            half = HalfModel(rows=r, reference=None,
                             sigma2=initial_sigma2(self.pset, r, self.box, self.tomograms, self.dtype,
                                                   transforms=self.source.transforms))
            host = ref.copy()
            half.set_reference(be.to_device(host, "map"), host=host)
            self.halves.append(half)
        sampling = Sampling(healpix_order=opts.healpix_order, offset_range_A=opts.offset_range_px * self.pix,
                            offset_step_A=opts.offset_step_px * self.pix, sym=opts.sym,
                            sigma_tilt=opts.sigma_tilt if opts.sigma_tilt > 0 else 0.0)
        res0 = opts.ini_high if opts.ini_high > 0 else 2 * self.pix * self.box / max(round(0.07 * self.box), 1)
        self.state = RefineState(iteration=0, sampling=sampling, current_resolution=res0)
        self._update_sizes()

    @classmethod
    def from_options(cls, opts: RefineOptions, progress: Callable[[dict], None] | None = None,
                     executor: EStepExecutor | None = None) -> "AutoRefine":
        """Read and check what ``opts`` names, then build the job (the I/O of an auto-refine).

        With ``continue_from`` (RELION's ``--continue``): the run's own stored options, written
        into the new output root, and its saved state. Then the particle and tomogram sets, the
        reference map (its box and pixel size checked against the particles') and the solvent
        mask (box and values checked).

        Raises
        ------
        InputError
            An input that does not fit, naming the file and the field.
        """
        if opts.continue_from:
            from subtomo_nb.refine.state import stored_options

            stored = stored_options(opts.continue_from)
            stored.update(output_root=opts.output_root, continue_from=opts.continue_from, project_dir=opts.project_dir)
            opts = RefineOptions(**{k: v for k, v in stored.items() if k in RefineOptions.__dataclass_fields__})
        particles, tomograms = cls.read_particles(opts)
        box, pix = common_box_and_pixel(particles)
        reference = _read_reference(opts.reference, box, pix)
        mask = _read_solvent_mask(opts.solvent_mask, box) if opts.solvent_mask else None
        job = cls(opts, particles, tomograms, reference, solvent_mask=mask, progress=progress, executor=executor)
        if opts.continue_from:
            from subtomo_nb.refine.state import load_state

            load_state(job, opts.continue_from)
        return job

    # ------------------------------------------------------------------ sizes and sampling
    def _update_sizes(self) -> None:
        s = self.state
        maxres = max(shell_of_resolution(s.current_resolution, self.box, self.pix), 5)
        if s.has_converged:
            s.current_size = self.box
            return
        extra = round(0.25 * self.box / 2) if (s.ave_pmax > 0.1 and s.has_high_fsc_at_limit) else s.incr_size
        s.current_size = int(min(2 * (maxres + extra), self.box))

    def _update_sampling(self) -> None:
        """Auto-sampling (§6.11): go finer when resolution and hidden variables allow."""
        s, o = self.state, self.opts
        smp = s.sampling
        fine = smp.fine_step
        res_inv = 1.0 / s.current_resolution
        d = 2 * self.radius_px * self.pix
        required = 360.0 / math.ceil(math.pi * d * res_inv)
        resol_ok = s.nr_iter_wo_resol_gain >= 1 or (
            o.auto_resol_angles and required < fine and smp.healpix_order + 1 != o.auto_local_healpix_order)
        hidden_ok = s.nr_iter_wo_hidden_changes >= 1 or o.auto_ignore_angles
        if not (resol_ok and hidden_ok):
            return
        if fine < 0.75 * s.acc_rot:
            s.has_fine_enough_sampling = True
            return
        order = smp.healpix_order + 1
        step_A, range_A = finer_translations(smp.offset_step_A, smp.offset_range_A, s.acc_trans_A,
                                             s.change_offsets_A, smp.oversampling)
        changes = dict(healpix_order=order, offset_step_A=step_A, offset_range_A=range_A)
        if order >= o.auto_local_healpix_order:
            sig = 2.0 * angular_step(order, 1)
            changes.update(sigma_rot=sig, sigma_tilt=sig, sigma_psi=sig)
        s.sampling = smp.with_(**changes)
        s.nr_iter_wo_resol_gain = 0
        s.nr_iter_wo_hidden_changes = 0

    def _converged(self) -> bool:
        s = self.state
        return s.has_fine_enough_sampling and s.nr_iter_wo_resol_gain >= 1 and (
            self.opts.auto_ignore_angles or s.nr_iter_wo_hidden_changes >= 1)

    def _stop_record(self) -> dict:
        """Why the iteration that starts now is the final one: RELION's criteria, as numbers."""
        s, o = self.state, self.opts
        converged = self._converged()
        return {"reason": "converged" if converged else "iteration limit", "iteration": s.iteration,
                "auto_iter_max": o.auto_iter_max, "fine_step_deg": s.sampling.fine_step,
                "acc_rot_deg": s.acc_rot, "has_fine_enough_sampling": s.has_fine_enough_sampling,
                "nr_iter_wo_resol_gain": s.nr_iter_wo_resol_gain,
                "nr_iter_wo_hidden_changes": s.nr_iter_wo_hidden_changes,
                "auto_ignore_angles": o.auto_ignore_angles, "change_orientations_deg": s.change_orientations,
                "change_offsets_A": s.change_offsets_A, "offset_step_A": s.sampling.offset_step_A,
                "best_resolution_A": s.best_resolution, "ini_high_A": o.ini_high}

    # ------------------------------------------------------------------ one iteration
    def _r_max(self, final: bool) -> int:
        return self.box // 2 if final else self.state.current_size // 2

    def half_request(self, final: bool, halves: list[HalfModel] | None = None) -> EStepRequest:
        """This iteration's E-step of ``halves`` (default both half-sets), for the executor."""
        halves = self.halves if halves is None else halves
        s = self.state
        settings = self.estep_settings((self.box // 2) if final else s.current_size / 2,
                                       firstiter_cc=self.opts.firstiter_cc and s.iteration == 1)
        # in-process: the device references as they are; other processes' workers: the host maps
        # (copied down once per reference, as the maps written to disk)
        refs = [h.reference if self.executor_in_process else h.host_reference(self.backend) for h in halves]
        return self.estep_request([h.rows for h in halves], refs,
                                  [h.sigma2 for h in halves], settings, self._r_max(final))

    def _expectation(self, final: bool) -> list[HalfSetResult]:
        """Both half-sets' E-steps (never sharing data), with a particle count after each batch."""
        return self.run_estep(self.half_request(final))

    def iterate(self) -> bool:
        """Run one iteration; returns True when this was the final (converged) one."""
        s, o = self.state, self.opts
        s.iteration += 1
        t0 = time.perf_counter()
        final = self._converged() or s.iteration >= o.auto_iter_max
        if final:
            s.has_converged = True
        elif s.iteration > 1:
            self._update_sampling()
            if self._converged():
                final = s.has_converged = True
        if final:
            self.stop = self._stop_record()
        self._update_sizes()
        before = self.poses.copy_poses()
        estep = self._expectation(final)
        cc = o.firstiter_cc and s.iteration == 1
        for h, half in zip(self.halves, estep):
            num = np.zeros(self.box // 2 + 1)
            den = np.zeros(self.box // 2 + 1)
            self.poses.apply(half.batches, num, den)
            if not cc:
                h.sigma2 = sigma2_from_sums(num, den, h.sigma2)
        rows = np.concatenate([idx for half in estep for idx, _ in half.batches])
        self._changes = self.poses.changes(rows, before, self.ops)
        # the M-step, on the device: only curves and the maps written come to the host
        be = self.backend
        xp = be.xp
        bps = [_on_backend(half.backprojector, be) for half in estep]
        for bp in bps:
            bp.symmetrise(self.ops)
        join_shell = shell_of_resolution(max(o.low_resol_join_halves, s.current_resolution), self.box, self.pix)
        joined = _join_low_resolution(bps, math.ceil(join_shell), be) if o.low_resol_join_halves > 0 else bps
        avg = [bp.unregularised_average() for bp in joined]
        f = xp.asarray(be.to_device(fsc_curve(avg[0], avg[1]), "metadata"), copy=True)
        f[0] = 1.0
        if not final:
            f[s.current_size // 2:] = 0.0
        s.fsc = be.to_host(f, "results")
        if final:
            merged = BackProjector(self.box, pad=o.pad, r_max=self.box // 2, dtype=self.dtype, backend=be)
            for bp in bps:
                merged.add(bp)
            ssnr = merged.ssnr_tau2_from_fsc(f, o.tau2_fudge, whole_data=True)
            final_map = merged.reconstruct(tau2=ssnr.tau2, tau2_fudge=o.tau2_fudge)
            unfil = [bp.reconstruct() for bp in bps]
            s.current_resolution = resolution(s.fsc, self.box, self.pix, 0.143)
            curves = [be.to_host(x, "results") for x in (ssnr.ssnr, ssnr.tau2, ssnr.sigma2)]
            for h in self.halves:
                h.ssnr, h.tau2, h.ref_sigma2 = curves
            self._finish_iteration(t0)
            write_iteration(self, final=True, final_map=final_map, unfil=unfil)
            return True
        for h, bp in zip(self.halves, bps):
            ssnr = bp.ssnr_tau2_from_fsc(f, o.tau2_fudge)
            h.tau2, h.ssnr, h.ref_sigma2 = (be.to_host(x, "results") for x in (ssnr.tau2, ssnr.ssnr, ssnr.sigma2))
            vol = bp.reconstruct(tau2=ssnr.tau2, tau2_fudge=o.tau2_fudge)
            if o.firstiter_cc and s.iteration == 1 and o.ini_high > 0:
                vol = low_pass(vol, o.ini_high, self.pix)
            if o.flatten_solvent:
                vol = vol * self.mask
            h.set_reference(xp.astype(vol, xp.float64, copy=False))
        self._update_resolution()
        self._finish_iteration(t0)
        write_iteration(self, final=False)
        return False

    def _update_resolution(self) -> None:
        """Current resolution from the SSNR (§6.8) and the counters that depend on it."""
        s = self.state
        ssnr = np.mean([h.ssnr for h in self.halves], axis=0)
        below = np.flatnonzero(ssnr[1:] < 1.0)
        shell = (below[0] + 1 - 1) if below.size else len(ssnr) - 1
        above = np.flatnonzero(ssnr[1:] > 1.0)
        if above.size and above[-1] + 1 > shell + 3:
            shell = above[-1] + 1
        shell = max(shell, 5)
        s.record_resolution(self.box * self.pix / shell)
        lim = s.current_size // 2 - 1
        if 0 <= lim < len(s.fsc) and s.fsc[lim] > 0.2:
            s.has_high_fsc_at_limit = True
        i143 = np.flatnonzero(s.fsc[1:] < 0.143)
        i05 = np.flatnonzero(s.fsc[1:] < 0.5)
        if i143.size and i05.size:
            s.incr_size = max(s.incr_size, int(i143[0] - i05[0] + 5))

    def _finish_iteration(self, t0: float) -> None:
        s = self.state
        s.change_orientations, s.change_offsets_A = change_statistics(*self._changes)
        small_enough = (s.change_offsets_A < 0.4 * s.sampling.offset_step_A or
                        s.change_offsets_A >= s.smallest_change_offsets_A / 1.03) and (
            s.change_orientations < 0.4 * s.sampling.fine_step or
            s.change_orientations >= s.smallest_change_orientations / 1.03)
        s.nr_iter_wo_hidden_changes = s.nr_iter_wo_hidden_changes + 1 if small_enough else 0
        s.smallest_change_orientations = min(s.smallest_change_orientations, s.change_orientations)
        s.smallest_change_offsets_A = min(s.smallest_change_offsets_A, s.change_offsets_A)
        s.ave_pmax = float(self.poses.stats["rlnMaxValueProbDistribution"].mean())
        s.log_likelihood = float(self.poses.stats["rlnLogLikeliContribution"].sum())
        h1 = self.halves[0]
        xp = self.backend.xp
        proj = Projector(xp.astype(h1.reference, self.backend.dtype(self.dtype)), pad=self.opts.pad)
        # the particles' CTF² and multiplicities where they are (on the device since iteration 1)
        s.acc_rot, s.acc_trans_A = estimate_accuracy(proj, self.source.transforms, h1.rows, self.poses.angles,
                                                      h1.sigma2, self.box, self.pix, s.current_size, self.tomograms,
                                                      self.rng, self.dtype)
        # sigma of the offset prior: rms of the offsets (3D: / 3), floored at 2 Å² (RELION)
        s.sigma_offset_A = float(math.sqrt(max(np.mean(np.sum(self.poses.offsets_A ** 2, axis=1)) / 3.0, 2.0)))
        event = {"kind": "iteration", "iteration": s.iteration, "resolution_A": s.current_resolution,
                 "fsc": s.fsc.tolist(), "acc_rot": s.acc_rot, "acc_trans_A": s.acc_trans_A,
                 "healpix_order": s.sampling.healpix_order, "seconds": time.perf_counter() - t0,
                 "changes_orientations": s.change_orientations, "changes_offsets_A": s.change_offsets_A}
        s.history.append(event)
        self.progress(event)

    def run(self) -> dict:
        """Iterate until convergence; returns the final iteration's summary."""
        if not self.opts.continue_from:
            if self.reference_check is not None and len(self.ops) > 1:
                self.progress({"kind": "message", "message": self.reference_check.describe(self.opts.sym)})
            write_iteration(self, final=False, initial=True)
        try:
            while not self.iterate():
                pass
        finally:
            self.executor.release()
        s = self.state
        nyquist_shell = self.box // 2
        from subtomo_nb.io.particles import subtomogram_binning

        self.progress({"kind": "finished", **self.stop, "resolution_A": s.current_resolution,
                       "pixel_size_A": self.pix, "box": self.box, "binning": subtomogram_binning(self.pset),
                       "fsc_at_nyquist": float(s.fsc[nyquist_shell]) if s.fsc is not None and len(s.fsc) > nyquist_shell
                       else float("nan")})
        return self.state.history[-1]

