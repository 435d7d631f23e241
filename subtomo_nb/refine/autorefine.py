"""3D auto-refine: ``relion_refine --auto_refine --split_random_halves`` for pseudo-subtomograms.

One iteration (relion-conventions.md §6):

1. convergence check (§6.13); the converged iteration becomes the final one (all data to Nyquist);
2. auto-sampling (§6.11): finer HEALPix order when the resolution and accuracy rules allow,
   local searches from ``--auto_local_healpix_order`` on;
3. E-step per half-set (:func:`subtomo_nb.refine.expectation.expectation_batch`), each half with
   its own reference, noise model and back-projector, never sharing data;
4. M-step: noise power per shell, symmetry, half-set FSC (joined below ``--low_resol_join_halves``),
   tau2/SSNR from the FSC, regularised reconstruction, solvent flattening;
5. resolution, image sizes, accuracies and hidden-variable changes for the next iteration;
6. RELION-named outputs (``run_itNNN_*``; final ``run_class001.mrc`` etc.), written only inside
   the output directory.

The numerical work is in the core modules; this module keeps the iteration state.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.filters import low_pass
from subtomo_nb.fourier.fsc import fsc as fsc_curve
from subtomo_nb.fourier.fsc import resolution
from subtomo_nb.fourier.grid import radius_grid, shell_index
from subtomo_nb.fourier.masks import soft_sphere
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import angular_distance, euler_to_matrix
from subtomo_nb.geometry.healpix import angular_step
from subtomo_nb.geometry.symmetry import point_group
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_map
from subtomo_nb.refine.expectation import expectation_batch, flush_rotation_sums
from subtomo_nb.refine.outputs import write_iteration
from subtomo_nb.refine.reference import check_reference_symmetry
from subtomo_nb.refine.sampling import Sampling, coarse_radius, finer_translations
from subtomo_nb.tasks.particle_data import TransformCache, load_particle_set, particle_transforms
from subtomo_nb.tasks.reconstruct import common_box_and_pixel

#: Soft-edge width of the particle and solvent masks (pixels, RELION's --maskedge).
MASK_EDGE_PX = 5
#: Particles used for the initial noise estimate and the accuracy estimate (3D data, RELION).
N_SIGMA2_PARTICLES = 10
N_ACCURACY_PARTICLES = 10
#: Significance level of the accuracy estimate: -ln(0.01).
ACCURACY_THRESHOLD = 4.60517


@dataclass
class RefineOptions:
    """The ``relion_refine`` options of the tomo 3D auto-refine job (flag names in comments).

    Angles in degrees, distances in Å unless the name says px.
    """

    particles: str | os.PathLike                  # --i / --ios
    reference: str | os.PathLike                  # --ref
    output_root: str | os.PathLike                # --o (e.g. Refine3D/job009/run)
    tomograms: str | os.PathLike | None = None    # --tomograms
    solvent_mask: str | os.PathLike | None = None  # --solvent_mask
    firstiter_cc: bool = False                    # --firstiter_cc
    ini_high: float = 60.0                        # --ini_high
    sym: str = "C1"                               # --sym
    ctf: bool = True                              # --ctf
    particle_diameter: float = -1.0               # --particle_diameter (-1: box minus edge)
    flatten_solvent: bool = True                  # --flatten_solvent
    zero_mask: bool = True                        # --zero_mask
    pad: int = 2                                  # --pad
    healpix_order: int = 2                        # --healpix_order
    auto_local_healpix_order: int = 4             # --auto_local_healpix_order
    offset_range_px: float = 5.0                  # --offset_range
    offset_step_px: float = 2.0                   # --offset_step
    sigma_tilt: float = -1.0                      # --sigma_tilt
    auto_ignore_angles: bool = False              # --auto_ignore_angles
    auto_resol_angles: bool = False               # --auto_resol_angles
    low_resol_join_halves: float = 40.0           # --low_resol_join_halves
    tau2_fudge: float = 1.0                       # --tau2_fudge
    random_seed: int = 0                          # --random_seed
    auto_iter_max: int = 999                      # --auto_iter_max
    batch_size: int = 16
    dtype: str = "float32"
    # not RELION's: put a reference whose symmetry is off the conventional axes onto them first
    # (subtomo_nb.refine.reference); "--no_align_ref_sym" in Additional arguments turns it off
    align_reference_symmetry: bool = True
    continue_from: str | os.PathLike | None = None  # --continue run_itNNN_optimiser.star
    # RELION's working directory: file names in the STAR outputs are relative to it (None: the current one)
    project_dir: str | os.PathLike | None = None


@dataclass
class HalfModel:
    """What each half-set keeps between iterations."""

    rows: np.ndarray
    reference: np.ndarray
    sigma2: np.ndarray
    tau2: np.ndarray | None = None
    ssnr: np.ndarray | None = None
    #: noise power of the reconstruction, count / sum(pad**3 W) per shell (rlnReferenceSigma2)
    ref_sigma2: np.ndarray | None = None


@dataclass
class RefineState:
    """The optimiser state (what RELION writes in _optimiser.star, _model.star, _sampling.star)."""

    iteration: int
    sampling: Sampling
    current_resolution: float
    best_resolution: float = 999.0
    current_size: int = 0
    incr_size: int = 10
    has_high_fsc_at_limit: bool = False
    nr_iter_wo_resol_gain: int = 0
    nr_iter_wo_hidden_changes: int = 0
    has_fine_enough_sampling: bool = False
    has_converged: bool = False
    acc_rot: float = 999.0
    acc_trans_A: float = 999.0
    change_orientations: float = 999.0
    change_offsets_A: float = 999.0
    smallest_change_orientations: float = 999.0
    smallest_change_offsets_A: float = 999.0
    sigma_offset_A: float = 10.0
    fsc: np.ndarray | None = None
    ave_pmax: float = 0.0
    log_likelihood: float = 0.0
    history: list = field(default_factory=list)


def _shell_of_resolution(res_A: float, box: int, pix: float) -> int:
    return int(round(box * pix / res_A)) if res_A > 0 else 0


def initial_sigma2(pset, rows: np.ndarray, box: int, tomograms, dtype) -> np.ndarray:
    """RELION's initial noise estimate: per-shell power of the particles minus that of their mean, /2.

    For pseudo-subtomograms the power is normalised by the multiplicity, as the E-step's
    ``2 σ² M`` noise model (relion-conventions.md §5.3).
    """
    use = rows[:N_SIGMA2_PARTICLES]
    data, ctf2, mult = particle_transforms(pset, use, tomograms=tomograms, dtype=dtype)
    mult = np.ones(ctf2.shape) if mult is None else mult
    mean = data.mean(axis=0, keepdims=True)
    resid = np.abs(data - mean) ** 2 * (len(use) / max(len(use) - 1, 1))
    sh = np.broadcast_to(shell_index(box), data.shape)
    nsh = box // 2 + 1
    ok = mult > 0.01
    num = np.bincount(sh[ok], weights=resid[ok], minlength=nsh)[:nsh]
    den = 2.0 * np.bincount(sh[ok], weights=mult[ok], minlength=nsh)[:nsh]
    s2 = np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)
    # shells without data take their neighbour's value (RELION replaces non-positive values)
    for i in range(1, nsh):
        if s2[i] <= 0:
            s2[i] = s2[i - 1]
    s2[0] = s2[1] if nsh > 1 else s2[0]
    return s2


def _solvent_mask(opts: RefineOptions, box: int, pix: float) -> np.ndarray:
    if opts.solvent_mask:
        mask, _ = read_map(opts.solvent_mask, require_cube=True)
        if mask.shape[0] != box:
            raise InputError(what=f"mask box {mask.shape[0]} differs from the particles' box {box}",
                             path=opts.solvent_mask, field="rlnImageSize")
        if mask.min() < -1e-3 or mask.max() > 1 + 1e-3:
            raise InputError(what="solvent mask values must lie in [0, 1]", path=opts.solvent_mask)
        return np.clip(mask, 0, 1)
    return soft_sphere(box, _particle_radius_px(opts, box, pix), MASK_EDGE_PX)


def _particle_radius_px(opts: RefineOptions, box: int, pix: float) -> float:
    d = opts.particle_diameter if opts.particle_diameter > 0 else (box - MASK_EDGE_PX) * pix
    return d / (2.0 * pix)


def _join_low_resolution(bps: list[BackProjector], shell: int) -> list[BackProjector]:
    """Copies of the half back-projectors with data and weight averaged for |k| <= shell (§6.2)."""
    low = radius_grid(bps[0].padded) <= shell * bps[0].pad
    out = []
    for bp in bps:
        c = BackProjector(bp.box, pad=bp.pad, r_max=bp.r_max, dtype=bp.rdtype)
        c.data, c.weight = bp.data.copy(), bp.weight.copy()
        out.append(c)
    d = 0.5 * (bps[0].data + bps[1].data)
    w = 0.5 * (bps[0].weight + bps[1].weight)
    for c in out:
        c.data[low] = d[low]
        c.weight[low] = w[low]
    return out


def accuracy_steps(limit: float, schedule: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Trial errors of RELION's accuracy search: step ``s`` while the error is below ``bound``.

    ``schedule`` holds ``(bound, step)`` pairs in increasing order; the last step applies beyond
    the last bound. Errors stop at the first one above ``limit`` (RELION's search stops there too).
    """
    out, e = [], 0.0
    while True:
        step = next((st for bound, st in schedule if e < bound - 1e-9), schedule[-1][1])
        e = round(e + step, 6)
        out.append(e)
        if e > limit:
            return np.asarray(out)


#: RELION's angular error steps (degrees) of the accuracy search, and where it gives up (> 30°).
ANGULAR_ERROR_STEPS = accuracy_steps(30.0, ((0.2, 0.05), (1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0),
                                            (20.0, 2.0), (np.inf, 5.0)))
#: RELION's translational error steps (pixels), giving up above 10 pixels.
TRANSLATION_ERROR_STEPS = accuracy_steps(10.0, ((1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0), (np.inf, 2.0)))


def _estimate_accuracy(projector: Projector, pset, rows, angles, sigma2, box, pix, current_size, tomograms,
                       rng: np.random.Generator, dtype) -> tuple[float, float]:
    """RELION's expected angular (°) and translational (Å) accuracy (§6.11), vectorised.

    For each of the first particles, one Euler angle (rot, tilt or psi, drawn at random per
    particle) or one offset component (x, y or z) is increased along RELION's error steps until the
    noise-weighted squared difference of the CTF-weighted reference projections, over the
    frequencies of the current image size, exceeds -ln(0.01); the accuracies are the mean errors
    reached (a particle that never gets there counts with the last step, as in RELION).

    Parameters
    ----------
    angles : (n, 3) current rot, tilt, psi of all particles (degrees).
    sigma2 : (box//2+1,) noise power per shell.
    current_size : the iteration's image size (pixels); frequencies up to ``current_size // 2``.
    """
    from subtomo_nb.refine.expectation import FourierSelection

    use = rows[:N_ACCURACY_PARTICLES]
    n = len(use)
    _, ctf2, mult = particle_transforms(pset, use, tomograms=tomograms, dtype=dtype)
    mult = np.ones(ctf2.shape) if mult is None else mult
    sel = FourierSelection.make(box, max(current_size // 2, 1))
    W = ctf2.reshape(n, -1)[:, sel.index].astype(np.float64)
    M = mult.reshape(n, -1)[:, sel.index]
    inv = np.where(M > 0.01, 1.0 / (2.0 * sigma2[sel.shell] * np.maximum(M, 1e-6)), 0.0)
    weight = W ** 2 * inv                                              # (n, K)
    ang0 = np.asarray(angles, dtype=np.float64)[use]
    V0 = projector.sample(euler_to_matrix(*ang0.T), sel.points).astype(np.complex128)   # (n, K)
    # angles: perturb rot, tilt or psi (one per particle) by each trial error
    which = rng.integers(0, 3, size=n)
    trial = np.repeat(ang0[:, None, :], len(ANGULAR_ERROR_STEPS), axis=1)   # (n, S, 3)
    trial[np.arange(n), :, which] += ANGULAR_ERROR_STEPS
    V1 = projector.sample(euler_to_matrix(*trial.reshape(-1, 3).T), sel.points).reshape(n, len(ANGULAR_ERROR_STEPS), -1)
    d2 = np.einsum("nk,nsk->ns", weight, np.abs(V1 - V0[:, None]) ** 2)
    acc_rot = ANGULAR_ERROR_STEPS[_first_above(d2, ACCURACY_THRESHOLD)]
    # translations: shift along x, y or z (one per particle)
    axis = rng.integers(0, 3, size=n)
    k_axis = sel.points[:, axis].T                                     # (n, K)
    phase = np.exp((-2j * np.pi / box) * TRANSLATION_ERROR_STEPS[None, :, None] * k_axis[:, None, :])
    d2t = np.einsum("nk,nsk->ns", weight, np.abs(V0[:, None] * (phase - 1.0)) ** 2)
    acc_t = TRANSLATION_ERROR_STEPS[_first_above(d2t, ACCURACY_THRESHOLD)]
    return float(acc_rot.mean()), float(acc_t.mean() * pix)


def _first_above(d2: np.ndarray, threshold: float) -> np.ndarray:
    """Per row, the index of the first entry above ``threshold`` (the last index where none is)."""
    above = d2 > threshold
    return np.where(above.any(axis=1), np.argmax(above, axis=1), d2.shape[1] - 1)


class AutoRefine:
    """A running 3D auto-refine (one object per job; :meth:`run` iterates to convergence)."""

    def __init__(self, opts: RefineOptions, progress: Callable[[dict], None] | None = None,
                 client: object | None = None) -> None:
        if opts.continue_from:
            # RELION's --continue: the run's own options, written into the new output root
            from subtomo_nb.refine.state import stored_options

            stored = stored_options(opts.continue_from)
            stored.update(output_root=opts.output_root, continue_from=opts.continue_from, project_dir=opts.project_dir)
            opts = RefineOptions(**{k: v for k, v in stored.items() if k in RefineOptions.__dataclass_fields__})
        self.opts = opts
        self.client = client  # a dask client (subtomo_nb.parallel.get_client), or None: serial
        self._batches = None  # ParticleBatches, made on the first parallel iteration
        self.stop: dict = {}  # why the final iteration was final (set when it starts)
        self._particles_done = self._particles_total = 0
        self.progress = progress or (lambda event: None)
        self.root = Path(opts.output_root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.pset, self.tomograms = load_particle_set(opts.particles, opts.tomograms)
        self.box, self.pix = common_box_and_pixel(self.pset)
        self.dtype = np.float32 if opts.dtype == "float32" else np.float64
        # serial E-steps read each particle once and keep it (as the dask workers keep theirs)
        self._particles = TransformCache(self.pset, self.tomograms, self.dtype)
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
        get = lambda c: tab[c].to_numpy(np.float64) if c in tab.columns else np.zeros(n)  # noqa: E731
        self.angles = np.stack([get("rlnAngleRot"), get("rlnAngleTilt"), get("rlnAnglePsi")], axis=1)
        self.offsets_A = np.stack([get("rlnOriginXAngst"), get("rlnOriginYAngst"), get("rlnOriginZAngst")], axis=1)
        self.tilt_prior = get("rlnAngleTiltPrior") if "rlnAngleTiltPrior" in tab.columns else self.angles[:, 1].copy()
        self.stats = pd.DataFrame({"rlnLogLikeliContribution": np.zeros(n), "rlnMaxValueProbDistribution": np.zeros(n),
                                   "rlnNrOfSignificantSamples": np.zeros(n, dtype=int)})
        ref, ref_pix = read_map(opts.reference, require_cube=True)
        if ref.shape[0] != self.box:
            raise InputError(what=f"reference box {ref.shape[0]} differs from the particles' box {self.box}",
                             path=opts.reference, field="rlnImageSize")
        if ref_pix not in (0.0, 1.0) and abs(ref_pix - self.pix) > 1e-3 * self.pix:
            raise InputError(what=f"reference pixel size {ref_pix} Å differs from the particles' {self.pix} Å",
                             path=opts.reference, field="rlnImagePixelSize")
        ref = np.asarray(ref, dtype=np.float64)
        if opts.ini_high > 0:
            ref = low_pass(ref, opts.ini_high, self.pix)
        self.reference_check = None
        if opts.align_reference_symmetry and not opts.continue_from:
            self.reference_check = check_reference_symmetry(ref, opts.sym, self.pix, seed=opts.random_seed)
            ref = self.reference_check.volume
        self.mask = _solvent_mask(opts, self.box, self.pix)
        halves = [np.flatnonzero(subset == h) for h in (1, 2)]
        self.halves = [HalfModel(rows=r, reference=ref.copy(),
                                 sigma2=initial_sigma2(self.pset, r, self.box, self.tomograms, self.dtype))
                       for r in halves]
        sampling = Sampling(healpix_order=opts.healpix_order, offset_range_A=opts.offset_range_px * self.pix,
                            offset_step_A=opts.offset_step_px * self.pix, sym=opts.sym,
                            sigma_tilt=opts.sigma_tilt if opts.sigma_tilt > 0 else 0.0)
        res0 = opts.ini_high if opts.ini_high > 0 else 2 * self.pix * self.box / max(round(0.07 * self.box), 1)
        self.state = RefineState(iteration=0, sampling=sampling, current_resolution=res0)
        self._update_sizes()
        if opts.continue_from:
            from subtomo_nb.refine.state import load_state

            load_state(self, opts.continue_from)

    # ------------------------------------------------------------------ sizes and sampling
    def _update_sizes(self) -> None:
        s = self.state
        maxres = max(_shell_of_resolution(s.current_resolution, self.box, self.pix), 5)
        if s.has_converged:
            s.current_size = self.box
            return
        extra = round(0.25 * self.box / 2) if (s.ave_pmax > 0.1 and s.has_high_fsc_at_limit) else s.incr_size
        s.current_size = int(min(2 * (maxres + extra), self.box))

    def _coarse_radius(self) -> float:
        d = 2 * _particle_radius_px(self.opts, self.box, self.pix) * self.pix
        return coarse_radius(self.state.sampling.coarse_step, d, self.pix, self.box, self.state.current_size)

    def _update_sampling(self) -> None:
        """Auto-sampling (§6.11): go finer when resolution and hidden variables allow."""
        s, o = self.state, self.opts
        smp = s.sampling
        fine = smp.fine_step
        res_inv = 1.0 / s.current_resolution
        d = 2 * _particle_radius_px(o, self.box, self.pix) * self.pix
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
    def _expectation_args(self, final: bool) -> dict:
        """Arguments of the batch E-step shared by every batch of this iteration."""
        s, o = self.state, self.opts
        fine_r = (self.box // 2) if final else s.current_size / 2
        return dict(pixel_size_A=self.pix, coarse_radius=min(self._coarse_radius(), fine_r), fine_radius=fine_r,
                    sigma_offset_A=s.sigma_offset_A, firstiter_cc=o.firstiter_cc and s.iteration == 1)

    def _prior_angles(self) -> np.ndarray:
        """Centres of the angular priors: current angles, with the tilt prior where one is used."""
        prior = self.angles.copy()
        if self.state.sampling.sigma_tilt > 0 and not self.state.sampling.is_local:
            prior[:, 1] = self.tilt_prior
        return prior

    def _r_max(self, final: bool) -> int:
        return self.box // 2 if final else self.state.current_size // 2

    def _expectation(self, half: HalfModel, final: bool) -> tuple[BackProjector, list]:
        """Serial E-step of one half-set: (back-projector, [(rows, BatchResult)] in batch order)."""
        s, o = self.state, self.opts
        proj = Projector(half.reference.astype(self.dtype), pad=o.pad)
        bp = BackProjector(self.box, pad=o.pad, r_max=self._r_max(final), dtype=self.dtype)
        kw = self._expectation_args(final)
        prior = self._prior_angles()
        cache: dict = {}
        out = []
        rows = half.rows
        if s.sampling.is_local:
            # local searches: batch particles with similar directions, so that the union of their
            # neighbourhoods (what a batch scores as one matrix product) stays small
            rot, tilt = self.angles[rows, 0], self.angles[rows, 1]
            rows = rows[np.lexsort((rot, np.round(tilt / (3 * s.sampling.coarse_step))))]
        for start in range(0, len(rows), o.batch_size):
            idx = rows[start:start + o.batch_size]
            data, ctf2, mult = self._particles.shifted(idx, self.offsets_A[idx] / self.pix)
            if not o.ctf:
                ctf2 = (mult > 0.01).astype(self.dtype) if mult is not None else np.ones_like(ctf2)
            res = expectation_batch(proj, data, ctf2, mult, half.sigma2, s.sampling, prior[idx],
                                    backprojector=bp, coarse_cache=cache, **kw)
            out.append((idx, res))
            self._particles_done += len(idx)
            self.progress({"kind": "particles", "iteration": s.iteration, "done": self._particles_done,
                           "of": self._particles_total})
        flush_rotation_sums(cache)
        return bp, out

    def _expectation_parallel(self, final: bool) -> list[tuple[BackProjector, list]]:
        """Both half-sets' E-steps on the dask client (one graph per half-set, no shared data)."""
        from subtomo_nb.parallel import ParticleBatches, run_halves_estep
        from subtomo_nb.refine.particle_progress import batch_counter

        s, o = self.state, self.opts
        if self._batches is None:
            self._batches = ParticleBatches(self.client, self.pset, [h.rows for h in self.halves],
                                            tomograms=self.tomograms, batch_size=o.batch_size,
                                            dtype=self.dtype, name="refine")
        kw = self._expectation_args(final)
        count = batch_counter([len(self._batches.rows(i)) for i in range(len(self.halves))], o.batch_size,
                              s.iteration, self.progress)
        out = run_halves_estep(self.client, self._batches, [h.reference for h in self.halves],
                               sigma2=[h.sigma2 for h in self.halves], progress=count, sampling=s.sampling,
                               prior_angles=self._prior_angles(), origins_px=self.offsets_A / self.pix,
                               pad=o.pad, r_max=self._r_max(final), dtype=self.dtype, ctf=o.ctf, **kw)
        halves = []
        for i, (bp, results) in enumerate(out):
            rows = self._batches.rows(i)
            bounds = np.cumsum([0] + [len(r.pmax) for r in results])
            halves.append((bp, [(rows[a:b], r) for a, b, r in zip(bounds[:-1], bounds[1:], results)]))
        return halves

    def _apply_results(self, half: HalfModel, batches: list, firstiter_cc: bool) -> None:
        """New poses, statistics, noise power and hidden-variable changes of one half-set."""
        rows = np.concatenate([idx for idx, _ in batches])
        old_angles = self.angles[rows].copy()
        old_offsets = self.offsets_A[rows].copy()
        num = np.zeros(self.box // 2 + 1)
        den = np.zeros(self.box // 2 + 1)
        for idx, res in batches:
            self.angles[idx] = np.stack([res.rot, res.tilt, res.psi], axis=1)
            # the data were centred by +origin; the best translation t moves the centre further
            self.offsets_A[idx] = self.offsets_A[idx] + res.shift_px * self.pix
            self.stats.loc[idx, "rlnLogLikeliContribution"] = res.log_likelihood
            self.stats.loc[idx, "rlnMaxValueProbDistribution"] = res.pmax
            self.stats.loc[idx, "rlnNrOfSignificantSamples"] = res.n_significant
            num += res.sigma2_num
            den += res.sigma2_den
        if not firstiter_cc:
            new = np.where(den > 0, num / np.maximum(den, 1e-30), half.sigma2)
            half.sigma2 = np.where(new > 0, new, half.sigma2)
        A_old = euler_to_matrix(*old_angles.T)
        A_new = euler_to_matrix(*self.angles[rows].T)
        dang = np.min([angular_distance(A_new, A_old @ S.T) for S in self.ops], axis=0)
        doff = np.linalg.norm(self.offsets_A[rows] - old_offsets, axis=1)
        self._changes.append((dang, doff))

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
        self._changes: list = []
        self._particles_done = 0
        self._particles_total = sum(len(h.rows) for h in self.halves)
        if self.client is not None:
            estep = self._expectation_parallel(final)
        else:
            estep = [self._expectation(h, final) for h in self.halves]
        cc = o.firstiter_cc and s.iteration == 1
        for h, (_, batches) in zip(self.halves, estep):
            self._apply_results(h, batches, cc)
        bps = [bp for bp, _ in estep]
        for bp in bps:
            bp.symmetrise(self.ops)
        join_shell = _shell_of_resolution(max(o.low_resol_join_halves, s.current_resolution), self.box, self.pix)
        joined = _join_low_resolution(bps, math.ceil(join_shell)) if o.low_resol_join_halves > 0 else bps
        avg = [bp.unregularised_average() for bp in joined]
        f = np.asarray(fsc_curve(avg[0], avg[1]))
        f[0] = 1.0
        f[s.current_size // 2:] = np.where(final, f[s.current_size // 2:], 0.0)
        s.fsc = f
        if final:
            merged = BackProjector(self.box, pad=o.pad, r_max=self.box // 2, dtype=self.dtype)
            for bp in bps:
                merged.add(bp)
            ssnr = merged.ssnr_tau2_from_fsc(f, o.tau2_fudge, whole_data=True)
            final_map = merged.reconstruct(tau2=ssnr.tau2, tau2_fudge=o.tau2_fudge)
            unfil = [bp.reconstruct() for bp in bps]
            s.current_resolution = resolution(f, self.box, self.pix, 0.143)
            for h in self.halves:
                h.ssnr = ssnr.ssnr
                h.tau2 = ssnr.tau2
                h.ref_sigma2 = ssnr.sigma2
            self._finish_iteration(t0)
            write_iteration(self, final=True, final_map=final_map, unfil=unfil)
            return True
        for h, bp in zip(self.halves, bps):
            ssnr = bp.ssnr_tau2_from_fsc(f, o.tau2_fudge)
            h.tau2, h.ssnr, h.ref_sigma2 = ssnr.tau2, ssnr.ssnr, ssnr.sigma2
            vol = bp.reconstruct(tau2=ssnr.tau2, tau2_fudge=o.tau2_fudge)
            if o.firstiter_cc and s.iteration == 1 and o.ini_high > 0:
                vol = low_pass(vol, o.ini_high, self.pix)
            if o.flatten_solvent:
                vol = vol * self.mask
            h.reference = np.asarray(vol, dtype=np.float64)
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
        new_res = self.box * self.pix / shell
        if 1.0 / new_res <= 1.0 / s.current_resolution + 1e-4:
            s.nr_iter_wo_resol_gain += 1
        else:
            s.nr_iter_wo_resol_gain = 0
        s.current_resolution = new_res
        s.best_resolution = min(s.best_resolution, new_res)
        lim = s.current_size // 2 - 1
        if 0 <= lim < len(s.fsc) and s.fsc[lim] > 0.2:
            s.has_high_fsc_at_limit = True
        i143 = np.flatnonzero(s.fsc[1:] < 0.143)
        i05 = np.flatnonzero(s.fsc[1:] < 0.5)
        if i143.size and i05.size:
            s.incr_size = max(s.incr_size, int(i143[0] - i05[0] + 5))

    def _finish_iteration(self, t0: float) -> None:
        s = self.state
        dang = np.concatenate([c[0] for c in self._changes])
        doff = np.concatenate([c[1] for c in self._changes])
        s.change_orientations = float(dang.mean())
        s.change_offsets_A = float(np.sqrt(np.sum(doff ** 2) / (2 * len(doff))))
        small_enough = (s.change_offsets_A < 0.4 * s.sampling.offset_step_A or
                        s.change_offsets_A >= s.smallest_change_offsets_A / 1.03) and (
            s.change_orientations < 0.4 * s.sampling.fine_step or
            s.change_orientations >= s.smallest_change_orientations / 1.03)
        s.nr_iter_wo_hidden_changes = s.nr_iter_wo_hidden_changes + 1 if small_enough else 0
        s.smallest_change_orientations = min(s.smallest_change_orientations, s.change_orientations)
        s.smallest_change_offsets_A = min(s.smallest_change_offsets_A, s.change_offsets_A)
        s.ave_pmax = float(self.stats["rlnMaxValueProbDistribution"].mean())
        s.log_likelihood = float(self.stats["rlnLogLikeliContribution"].sum())
        h1 = self.halves[0]
        proj = Projector(h1.reference.astype(self.dtype), pad=self.opts.pad)
        s.acc_rot, s.acc_trans_A = _estimate_accuracy(proj, self.pset, h1.rows, self.angles, h1.sigma2, self.box,
                                                      self.pix, s.current_size, self.tomograms, self.rng, self.dtype)
        # sigma of the offset prior: rms of the offsets (3D: / 3), floored at 2 Å² (RELION)
        s.sigma_offset_A = float(math.sqrt(max(np.mean(np.sum(self.offsets_A ** 2, axis=1)) / 3.0, 2.0)))
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
            if self._batches is not None:
                self._batches.release()
        s = self.state
        nyquist_shell = self.box // 2
        from subtomo_nb.io.particles import subtomogram_binning

        self.progress({"kind": "finished", **self.stop, "resolution_A": s.current_resolution,
                       "pixel_size_A": self.pix, "box": self.box, "binning": subtomogram_binning(self.pset),
                       "fsc_at_nyquist": float(s.fsc[nyquist_shell]) if s.fsc is not None and len(s.fsc) > nyquist_shell
                       else float("nan")})
        return self.state.history[-1]

