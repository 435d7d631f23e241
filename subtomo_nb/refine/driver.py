"""What auto-refine and VDAM share as drivers: the particles, their poses and the E-step's executor.

:class:`PoseDriver` is the base of :class:`~subtomo_nb.refine.autorefine.AutoRefine` and
:class:`~subtomo_nb.initial_model.vdam.InitialModel`. It reads the particles, keeps their
:class:`~subtomo_nb.refine.poses.ParticlePoses`, and turns an iteration's E-step into an
:class:`~subtomo_nb.refine.executor.EStepRequest` for the executor passed in (serial by default),
counting particles as batches finish. The schedules of each job stay in its own module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from subtomo_nb.backend import get_backend
from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.io.tomograms import TomogramSet
from subtomo_nb.refine.executor import EStepExecutor, EStepRequest, HalfSetResult, ParticleSource, SerialExecutor
from subtomo_nb.refine.expectation import EStepSettings
from subtomo_nb.refine.particle_progress import batch_counter
from subtomo_nb.refine.poses import ParticlePoses, coarse_pass_radius, particle_radius_px
from subtomo_nb.refine.sampling import Sampling
from subtomo_nb.tasks.particle_data import load_particle_set
from subtomo_nb.tasks.reconstruct import common_box_and_pixel

__all__ = ["PoseOptions", "PoseState", "PoseDriver"]


@dataclass(kw_only=True)
class PoseOptions:
    """The ``relion_refine`` options auto-refine and VDAM share (flag names in comments).

    Angles in degrees, distances in Å unless the name says px. Each job's options add their own
    and set their own defaults of ``healpix_order``, ``pad`` and ``offset_range_px``.
    """

    particles: str | os.PathLike                  # --i / --ios
    output_root: str | os.PathLike                # --o (e.g. Refine3D/job009/run)
    tomograms: str | os.PathLike | None = None    # --tomograms
    sym: str = "C1"                               # --sym
    ctf: bool = True                              # --ctf
    particle_diameter: float = -1.0               # --particle_diameter (-1: box minus edge)
    flatten_solvent: bool = True                  # --flatten_solvent
    zero_mask: bool = True                        # --zero_mask
    auto_local_healpix_order: int = 4             # --auto_local_healpix_order
    offset_step_px: float = 2.0                   # --offset_step
    sigma_tilt: float = -1.0                      # --sigma_tilt (prior width on tilt; <= 0: none)
    random_seed: int = 0                          # --random_seed
    batch_size: int = 16                          # particles per E-step batch
    dtype: str = "float32"                        # precision of the E-step
    backend: str = "numpy"                        # the array backend of the iteration (--gpu, SUBTOMO_BACKEND)
    device_cache_bytes: int | None = None         # particles kept on a worker's device (bytes; the memory
                                                  # plan's resident_bytes); None: TRANSFORM_CACHE_BYTES
                                                  # in this process, every batch on dask workers


@dataclass(kw_only=True)
class PoseState:
    """The iteration state auto-refine and VDAM share (RELION's optimiser state; Å and degrees)."""

    iteration: int
    sampling: Sampling
    current_resolution: float
    best_resolution: float = 999.0
    current_size: int = 0
    nr_iter_wo_resol_gain: int = 0
    has_fine_enough_sampling: bool = False
    acc_rot: float = 999.0
    acc_trans_A: float = 999.0
    change_orientations: float = 999.0
    change_offsets_A: float = 999.0
    sigma_offset_A: float = 10.0
    ave_pmax: float = 0.0
    log_likelihood: float = 0.0
    history: list = field(default_factory=list)

    def record_resolution(self, resolution_A: float) -> None:
        """Take a new current resolution (Å), counting iterations without a gain as RELION does."""
        if 1.0 / resolution_A <= 1.0 / self.current_resolution + 1e-4:
            self.nr_iter_wo_resol_gain += 1
        else:
            self.nr_iter_wo_resol_gain = 0
        self.current_resolution = resolution_A
        self.best_resolution = min(self.best_resolution, resolution_A)


class PoseDriver:
    """Particles, poses and E-step of a refinement job (the base of auto-refine and VDAM).

    Parameters
    ----------
    opts
        The job's options; read here: ``particles``, ``tomograms``, ``output_root``, ``dtype``
        (``"float32"`` or ``"float64"``), ``batch_size``, ``particle_diameter`` (Å), ``pad``, ``ctf``,
        ``backend`` (the name given to :func:`~subtomo_nb.backend.get_backend`).
    progress
        Called with a dict per event; ``{"kind": "particles", "iteration", "done", "of"}`` after
        each E-step batch.
    executor
        Runs the E-steps; default :class:`~subtomo_nb.refine.executor.SerialExecutor`.

    Attributes
    ----------
    backend : the job's :class:`~subtomo_nb.backend.Backend`: the iteration's arrays live there.
    pset, tomograms : the particle and tomogram sets.
    box, pix : box size (pixels) and pixel size (Å).
    dtype : real precision of the E-step.
    radius_px : radius of the particle mask (pixels).
    source : the particles as the executor reads them (their transforms kept on the backend's device).
    poses : every particle's pose and statistics.

    Subclasses set ``self.state`` (with ``sampling``, ``iteration``, ``current_size``,
    ``sigma_offset_A``) before the first E-step.
    """

    state: PoseState

    def __init__(self, opts: PoseOptions, particles: ParticleSet, tomograms: TomogramSet | None,
                 progress: Callable[[dict], None] | None = None, executor: EStepExecutor | None = None) -> None:
        self.opts = opts
        self.backend = get_backend(opts.backend)
        self.executor: EStepExecutor = executor if executor is not None else SerialExecutor()
        self.progress = progress or (lambda event: None)
        self.root = Path(opts.output_root)
        self.pset, self.tomograms = particles, tomograms
        self.box, self.pix = common_box_and_pixel(self.pset)
        self.dtype = np.float32 if opts.dtype == "float32" else np.float64
        self.radius_px = particle_radius_px(opts.particle_diameter, self.box, self.pix)
        # serial E-steps read each particle once and keep it (as the dask workers keep theirs)
        self.source = ParticleSource(self.pset, self.tomograms, self.dtype, opts.batch_size, backend=self.backend.name,
                                     cache_bytes=opts.device_cache_bytes)
        self.poses = ParticlePoses.from_table(self.pset.particles, self.pix)

    @staticmethod
    def read_particles(opts: PoseOptions) -> tuple[ParticleSet, TomogramSet | None]:
        """The particle and tomogram sets ``opts`` names, read and checked, and the output directory made.

        The I/O of a job's ``from_options`` constructor: the driver itself reads no file.
        """
        Path(opts.output_root).parent.mkdir(parents=True, exist_ok=True)
        return load_particle_set(opts.particles, opts.tomograms)

    def set_device_cache_bytes(self, nbytes: int | None) -> None:
        """Keep at most ``nbytes`` of particles on each worker's device (the memory plan's
        ``resident_bytes``; None: the default); call before the first iteration."""
        self.opts.device_cache_bytes = None if nbytes is None else int(nbytes)
        self.source.set_cache_bytes(nbytes)

    def _coarse_radius(self) -> float:
        """Coarse-pass radius (Fourier pixels) from the coarse angular step (§6.8), within the current size."""
        s = self.state
        return coarse_pass_radius(s.sampling, self.radius_px, self.box, self.pix, s.current_size)

    def estep_settings(self, fine_radius: float, **extra: Any) -> EStepSettings:
        """This iteration's :class:`EStepSettings` with the fine pass to ``fine_radius`` (``extra``: the job's own)."""
        return EStepSettings(pixel_size_A=self.pix, coarse_radius=min(self._coarse_radius(), fine_radius),
                             fine_radius=fine_radius, sigma_offset_A=self.state.sigma_offset_A, **extra)

    def estep_request(self, halves: Sequence[np.ndarray], references: Sequence[Any],
                      sigma2: Sequence[np.ndarray], settings: EStepSettings, r_max: float,
                      back_project: bool = True) -> EStepRequest:
        """This iteration's E-step of ``halves`` (particle rows) against their references and noise.

        ``references``: device arrays of the job's backend for an in-process executor
        (:attr:`executor_in_process`: used where they are), host maps for one whose workers are
        other processes (what they receive and copy to their device once per iteration).
        """
        sampling = self.state.sampling
        return EStepRequest(source=self.source, halves=list(halves), references=list(references),
                            sigma2=list(sigma2), sampling=sampling, settings=settings,
                            prior_angles=self.poses.prior_angles(sampling), origins_px=self.poses.origins_px,
                            pad=self.opts.pad, r_max=r_max, ctf=self.opts.ctf, back_project=back_project,
                            backend=self.backend.name)

    @property
    def executor_in_process(self) -> bool:
        """Whether the executor runs the E-steps in this process (``in_process``): it then takes the
        references on the job's device as they are; otherwise host maps, for its workers."""
        return bool(getattr(self.executor, "in_process", False))

    def run_estep(self, request: EStepRequest) -> list[HalfSetResult]:
        """Run ``request`` on the executor, emitting particle counts as batches finish."""
        count = batch_counter([len(h) for h in request.halves], self.opts.batch_size, self.state.iteration,
                              self.progress)
        return self.executor.run(request, progress=count)
