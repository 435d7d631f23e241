"""Peak device memory of one E-step worker, first and final iteration, before a job starts.

Running out of memory in the last iteration (full box, finest sampling) is RELION's best-known
failure (its issues #192, #336, #381). :func:`plan_memory` estimates, for one worker (one GPU, or
one CPU worker process), the largest memory an iteration needs, from the job's box, padding,
precision, batch size, the particles the worker serves, and the sampling of the first and of the
final iteration.

The peak has two parts: the *working set* (projectors, caches, the per-task terms and one batch
of particles in flight) and the *resident particles* (the transforms kept on the device across
iterations, copied there once). When the available memory is known, a worker keeps
``resident = min(its particles, (available - working set - margin) / per particle)`` particles
on its device (:attr:`MemoryPlan.resident_bytes` is the byte budget the job layer passes to the
engine); the others are copied again every iteration, one copy per batch per iteration: in
this process re-read from disk (and copied to the GPU on cupy); on dask GPU workers kept in the
worker's host memory (its load futures) and copied to its GPU; dask CPU workers keep every particle
in their memory (no budget applies). RELION streams every particle; here they stay when they fit,
and the job degrades to streaming when they do not. The margin is :data:`SAFETY_FRACTION` of the available memory (allocator
fragmentation, the CUDA context and FFT plans, estimates that are bounds of the main terms only).
:meth:`MemoryPlan.check` refuses a job, in one line, only when its working set alone cannot fit.

The estimate (bytes; ``f`` the real item size, 4 for float32, ``c = 2 f``; ``N`` the box,
``m`` the padded box, ``V(n) = n² (n/2 + 1)`` the voxels of a half transform; ``K(r) = 2π r³ / 3``
the non-redundant Fourier points within radius ``r``; ``P`` the batch size; ``R`` the coarse
orientations of the grid, ``Rb`` those a batch reaches; ``T`` the coarse translations;
``h`` the half-sets a worker serves (2); ``n_p`` the particles a worker serves: batches are placed
round-robin, so ``n_p = min(n, ceil(B / W) P)`` with ``B = Σ_halves ceil(n_h / P)`` the batches of
the ``n`` particles (half-sets of about ``n / 2`` each) and ``W`` the workers)::

    working   = projectors     h · 2 V(m) c                        padded transform + extended copy
              + coarse cache   h · 3f K_c R    if R K_c <= COARSE_CACHE_POINTS (else 0)
              + fine cache     h · 3f R 8^os K_f if that is <= FINE_CACHE_POINTS (else 0)
              + phases         h · (T K_c c + min(T 8^os K_f c, FINE_PHASE_BYTES))
    per task  = batch in flight P V(N) (c + 2f)                   a streamed batch's upload, or the
                                                                  shifted copy of a resident one
              + back-projector V(m) (c + f)
              + rotation sums  R 8^os K_f (c + f)   if R 8^os <= MAX_ROTATION_SUM_IDS (deferred sums)
              + coarse pass    P K_c (2c + 3f) + P T K_c c + 3 · 8 P Rb T   (+ 3f K_c Rb uncached)
              + fine pass      2 E (5f + c)   E = max(FINE_BUDGET, 8^os (min(MAX_SIGNIFICANT_COARSE,
                                              R1) + T) K_f) elements of a chunk (R1: orientations
                                              one particle reaches), each with the reference
                                              [Re, Im, |V|²] of a fine orientation and the data
                                              and phases of a fine translation; twice for
                                              temporaries
              + back-projection ROTATION_CHUNK K_f (48 + c + f)   rotated points (float64) and
                                              their trilinear weights, per inserted chunk
    driver    = (cupy only)    2 V(m) (c + f) + 4 V(m) c          the driver's M-step on the job's first
                                                                  GPU: two half-set back-projectors
                                                                  and reconstruction temporaries
                                                                  (padded size); counted in every
                                                                  worker's working set (conservative:
                                                                  only the worker sharing the
                                                                  driver's GPU needs it)
    resident  = particles      n_r V(N) (c + 2f)                  data, CTF², multiplicity of the
                                                                  n_r <= n_p particles kept
    peak      = working + per task + driver + resident              (one task at a time per worker)

with the constants of :mod:`subtomo_nb.refine.expectation` (``FINE_BUDGET``,
``COARSE_CACHE_POINTS``, ``FINE_CACHE_POINTS``, ``FINE_PHASE_BYTES``, ``MAX_ROTATION_SUM_IDS``).
A particle with broad posteriors (early iterations, noisy data) can need more than
``FINE_BUDGET`` alone (its fine pass is one chunk): the ``E`` above bounds that case. The final iteration is at
the full box (``K_c = K_f = K(N/2)``) and at ``auto_local_healpix_order`` with local searches of
±3σ, σ = 2 × the oversampled step (auto-refine's rule); the first at the coarse radius of the
initial resolution. The terms are upper bounds of what the E-step allocates; transients of the
projector's construction (a real ``m³`` volume) are below the per-task terms and not added.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from subtomo_nb.fourier.projector import padded_size
from subtomo_nb.geometry.healpix import angular_step
from subtomo_nb.io.errors import InputError
from subtomo_nb.refine import expectation as _estep
from subtomo_nb.refine.sampling import Sampling, batch_orientation_prior

__all__ = ["IterationSize", "MemoryPlan", "plan_memory", "final_sampling", "fourier_points", "host_memory",
           "format_bytes", "particle_bytes", "SAFETY_FRACTION"]

#: Part of the available memory a plan leaves free (allocator fragmentation, the CUDA context and
#: cuFFT plans, temporaries the estimate does not name).
SAFETY_FRACTION = 0.10


def particle_bytes(box: int, dtype: str | type) -> int:
    """Bytes one particle's transforms hold: its half transform, CTF² and multiplicity (``V(N) (c + 2f)``)."""
    f = int(np.dtype(dtype).itemsize)
    n = int(box)
    return n * n * (n // 2 + 1) * 4 * f


def fourier_points(radius: float) -> int:
    """Non-redundant half-transform points within ``radius`` (Fourier pixels): ``2π r³ / 3``."""
    return int(math.ceil(2.0 * math.pi * float(radius) ** 3 / 3.0))


def format_bytes(n: float) -> str:
    """``1.5 GiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def host_memory() -> int | None:
    """Available host memory (bytes): ``MemAvailable`` of /proc/meminfo, else physical pages × size."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def final_sampling(first: Sampling, auto_local_healpix_order: int) -> Sampling:
    """The finest sampling auto-refine reaches: ``auto_local_healpix_order`` with local searches.

    Local searches use σ = 2 × the oversampled step on rot, tilt and psi (auto-refine's rule);
    translations no wider than the first iteration's.
    """
    order = max(int(first.healpix_order), int(auto_local_healpix_order))
    sig = 2.0 * angular_step(order, first.oversampling)
    return Sampling(healpix_order=order, offset_range_A=first.offset_range_A, offset_step_A=first.offset_step_A,
                    sym=first.sym, oversampling=first.oversampling, sigma_rot=sig, sigma_tilt=sig, sigma_psi=sig)


@dataclass(frozen=True)
class IterationSize:
    """What sets an iteration's memory.

    Attributes
    ----------
    label : ``"first"`` or ``"final"``.
    healpix_order : coarse HEALPix order.
    step_deg : oversampled angular step (degrees).
    orientations : coarse orientations of the grid (R).
    reached : orientations a batch reaches (Rb; R for a global search).
    translations : coarse translations (T).
    coarse_radius, fine_radius : Fourier radii (pixels).
    terms : bytes per term of the estimate (see the module docstring); ``"particles"`` are the
        resident ones, every other term is the working set.
    """

    label: str
    healpix_order: int
    step_deg: float
    orientations: int
    reached: int
    translations: int
    coarse_radius: float
    fine_radius: float
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        """Estimated peak bytes of one worker in this iteration."""
        return int(sum(self.terms.values()))

    @property
    def working(self) -> int:
        """Estimated peak bytes of one worker in this iteration without its resident particles."""
        return int(sum(v for k, v in self.terms.items() if k != "particles"))


def _reached(sampling: Sampling, batch_size: int) -> tuple[int, int, int]:
    """``(R, Rb, R1)``: the grid's orientations, those a batch of spread-out priors reaches, and
    those one particle reaches."""
    grid = sampling.grid()
    n = len(grid.rot) * grid.n_psi
    if not (sampling.sigma_rot > 0 or sampling.sigma_tilt > 0 or sampling.sigma_psi > 0):
        return n, n, n
    rng = np.random.default_rng(0)          # a batch of unrelated particles: the widest union
    p = max(1, int(batch_size))
    rot = rng.uniform(-180, 180, p)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, p)))
    psi = rng.uniform(-180, 180, p)
    idx, _ = batch_orientation_prior(sampling, grid, rot, tilt, psi)
    one, _ = batch_orientation_prior(sampling, grid, rot[:1], tilt[:1], psi[:1])
    return n, int(len(idx)), int(len(one))


def _iteration(label: str, sampling: Sampling, *, box: int, pad: float, itemsize: int, batch_size: int,
               halves: int, pixel_size_A: float, coarse_radius: float,
               fine_radius: float, driver: bool = False) -> IterationSize:
    f, c = itemsize, 2 * itemsize
    N, m = int(box), padded_size(int(box), pad)
    half = lambda n: n * n * (n // 2 + 1)  # noqa: E731 - voxels of a half transform
    R, Rb, R1 = _reached(sampling, batch_size)
    T = len(sampling.translations_px(pixel_size_A))
    Kc, Kf = fourier_points(coarse_radius), fourier_points(fine_radius)
    P = int(batch_size)
    children = 8 ** int(sampling.oversampling)
    coarse_cached = R * Kc <= _estep.COARSE_CACHE_POINTS
    # fine-pass elements of a chunk: FINE_BUDGET, or one particle's children of all its
    # significant coarse samples (at most MAX_SIGNIFICANT_COARSE orientations, T translations)
    fine_elements = max(_estep.FINE_BUDGET, children * (min(_estep.MAX_SIGNIFICANT_COARSE, R1) + T) * Kf)
    fine_cached = R * children * Kf <= _estep.FINE_CACHE_POINTS
    terms = {
        "projectors": halves * 2 * half(m) * c,
        "coarse cache": halves * 3 * f * Kc * R if coarse_cached else 0,
        "fine cache": halves * 3 * f * R * children * Kf if fine_cached else 0,
        "phases": halves * (T * Kc * c + min(T * children * Kf * c, _estep.FINE_PHASE_BYTES)),
        "batch in flight": P * half(N) * (c + 2 * f),
        "back-projector": half(m) * (c + f),
        "coarse pass": P * Kc * (2 * c + 3 * f) + P * T * Kc * c + 3 * 8 * P * Rb * T
                       + (0 if coarse_cached else 3 * f * Kc * Rb),
        "rotation sums": R * children * Kf * (c + f) if R * children <= _estep.MAX_ROTATION_SUM_IDS else 0,
        "fine pass": 2 * fine_elements * (5 * f + c),
        "back-projection": _estep.ROTATION_CHUNK * Kf * (3 * 8 + 3 * 8 + c + f),
        "driver": 2 * half(m) * (c + f) + 4 * half(m) * c if driver else 0,
    }
    return IterationSize(label, int(sampling.healpix_order), angular_step(sampling.healpix_order, sampling.oversampling),
                         R, Rb, T, float(coarse_radius), float(fine_radius), {k: int(v) for k, v in terms.items()})


@dataclass(frozen=True)
class MemoryPlan:
    """The peak memory of one E-step worker in the first and the final iteration.

    Attributes
    ----------
    box, pad, dtype, batch_size : the job's box (pixels), padding, real precision, particles per batch.
    particles : particles a worker serves (the largest share of a worker).
    workers : number of workers (GPUs, or CPU worker processes).
    first, final : the two iterations (their ``"particles"`` term: the resident particles).
    available : bytes the worker may use (a GPU's free memory, or host RAM shared by the
        workers), or None when unknown.
    where : what ``available`` is (``"GPU free"``, ``"host RAM per worker"``).
    resident : particles a worker keeps on its device across iterations (``<= particles``; all of
        them when ``available`` is unknown); the others are copied again every iteration.
    dask : whether the workers are dask workers (the others are then kept in the workers' host
        memory; on the CPU all are kept) rather than this process (re-read from disk).
    """

    box: int
    pad: float
    dtype: str
    batch_size: int
    particles: int
    workers: int
    first: IterationSize
    final: IterationSize
    available: int | None
    where: str
    resident: int
    dask: bool = False

    @property
    def peak(self) -> int:
        """The larger of the two iterations' peaks (bytes), resident particles included."""
        return max(self.first.peak, self.final.peak)

    @property
    def working(self) -> int:
        """The larger of the two iterations' working sets (bytes): everything but the resident particles."""
        return max(self.first.working, self.final.working)

    @property
    def margin(self) -> int:
        """Bytes left free: :data:`SAFETY_FRACTION` of ``available`` (0 when unknown)."""
        return 0 if self.available is None else int(SAFETY_FRACTION * self.available)

    @property
    def per_particle(self) -> int:
        """Bytes of one particle's transforms (:func:`particle_bytes`)."""
        return particle_bytes(self.box, self.dtype)

    @property
    def resident_bytes(self) -> int | None:
        """Byte budget of the particles a worker keeps on its device (``resident`` particles; the
        engine keeps batches while they stay within it); None when ``available`` is unknown (keep all)."""
        return None if self.available is None else self.resident * self.per_particle

    @property
    def streamed(self) -> int:
        """Particles of a worker copied to its device again every iteration (beyond the budget)."""
        return self.particles - self.resident

    @property
    def fits(self) -> bool:
        """Whether the working set and the margin fit ``available`` (True when it is unknown)."""
        return self.available is None or self.working + self.margin <= self.available

    def lines(self) -> list[str]:
        """The plan as ``run.out`` lines (one per worker kind; all workers are alike)."""
        avail = "unknown" if self.available is None else f"{format_bytes(self.available)} {self.where}"
        out = [f"memory plan per worker ({self.workers} worker{'s' if self.workers != 1 else ''}): box {self.box} px, "
               f"padding {self.pad:g}, {self.dtype}, batch size {self.batch_size}, {self.particles} particles"]
        for it in (self.first, self.final):
            where = "full box" if it.label == "final" else f"radius {it.coarse_radius:g} px"
            out.append(f"  {it.label} iteration: HEALPix order {it.healpix_order} ({it.step_deg:.2f}°), "
                       f"{it.reached} of {it.orientations} orientations per batch, {it.translations} translations, "
                       f"{where}: working set {format_bytes(it.working)} (largest: "
                       + ", ".join(f"{k} {format_bytes(v)}" for k, v in
                                   sorted(((k, v) for k, v in it.terms.items() if k != "particles"),
                                          key=lambda kv: -kv[1])[:3])
                       + f"), peak {format_bytes(it.peak)}")
        place = "on the GPU" if self.where.startswith("GPU") else "in memory"
        if self.available is None:
            out.append(f"  available: unknown; all {self.particles} particles stay {place} "
                       f"({format_bytes(self.particles * self.per_particle)})")
        elif not self.fits:
            out.append(f"  available: {avail}; the working set {format_bytes(self.working)} and the margin "
                       f"{format_bytes(self.margin)} do not fit")
        elif self.dask and not self.where.startswith("GPU"):
            out.append(f"  available: {avail}; working set {format_bytes(self.working)}, margin "
                       f"{format_bytes(self.margin)}: all {self.particles} particles stay in the worker's memory "
                       f"({format_bytes(self.particles * self.per_particle)}), read once")
        else:
            if self.dask:
                again = "are kept in the worker's host memory and copied to its GPU every iteration"
            elif self.where.startswith("GPU"):
                again = "are re-read from disk and copied to the GPU every iteration"
            else:
                again = "are re-read from disk every iteration"
            out.append(f"  available: {avail}; working set {format_bytes(self.working)}, margin "
                       f"{format_bytes(self.margin)}: {self.resident} of {self.particles} particles stay {place} "
                       f"({format_bytes(self.resident * self.per_particle)}), copied there once"
                       + ("" if not self.streamed else
                          f"; {self.streamed} {again} (one copy per particle per "
                          f"iteration, {format_bytes(self.streamed * self.per_particle)})"))
        return out

    def check(self) -> None:
        """Refuse a plan whose working set cannot fit, in one line naming what to change.

        Particles that do not fit are streamed (copied again every iteration), never refused.

        Raises
        ------
        InputError
            The working set and the margin exceed the available memory.
        """
        if self.fits:
            return
        worst = max((self.first, self.final), key=lambda it: it.working)
        big = max((k for k in worst.terms if k != "particles"), key=worst.terms.get)
        lower = ", float32" if np.dtype(self.dtype).itemsize > 4 else ""
        raise InputError(None, field="memory", what=(
            f"the {worst.label} iteration's working set needs about {format_bytes(worst.working)} per worker "
            f"(largest: {big} {format_bytes(worst.terms[big])}) plus a {format_bytes(self.margin)} margin and "
            f"{format_bytes(self.available or 0)} is available ({self.where}); use a smaller batch size{lower} "
            f"or more GPUs"))


def plan_memory(*, box: int, pad: float, dtype: str | type, batch_size: int, particles: int, workers: int,
                first: Sampling, auto_local_healpix_order: int, pixel_size_A: float, first_radius: float,
                halves: int = 2, available: int | None = None, where: str = "", driver: bool = False,
                dask: bool = False) -> MemoryPlan:
    """The memory plan of a job's E-step workers.

    Parameters
    ----------
    box, pad, dtype, batch_size
        Box (pixels), padding factor, real precision and particles per E-step batch.
    particles
        Particles of the whole job; a worker serves at most ``ceil(B / workers)`` batches of
        ``batch_size`` (batches are placed round-robin; ``B`` the batches of the ``halves``
        half-sets of about ``particles / halves`` each), and never more than ``particles``.
    workers
        E-step workers (one per GPU; CPU worker processes; 1 when the job runs in its process).
    first
        The first iteration's sampling.
    auto_local_healpix_order
        Where auto-refine's local searches start (the final iteration's order).
    pixel_size_A
        Pixel size (Å), for the translations in pixels.
    first_radius
        The first iteration's Fourier radius (pixels; e.g. ``N · pixel / ini_high``).
    halves
        Half-sets a worker serves (2: gold-standard).
    available, where
        Bytes a worker may use and what they are (``Backend.memory()``'s free bytes on a GPU; host
        RAM divided by the workers on the CPU); None: unknown (every particle resident, never refused).
    driver
        Count the driver's M-step arrays in the working set (the cupy backend: the driver's GPU is
        also a worker's, or the only one); see the module docstring.
    dask
        The workers are dask workers (the printed line says where the particles beyond the budget are).
    """
    itemsize = int(np.dtype(dtype).itemsize)
    n, h, p = int(particles), max(1, int(halves)), max(1, int(batch_size))
    sizes = [n // h + (1 if i < n % h else 0) for i in range(h)]          # half-sets of about n / h
    n_batches = sum(-(-k // p) for k in sizes)
    per_worker = min(n, -(-n_batches // max(1, int(workers))) * p)
    common = dict(box=box, pad=pad, itemsize=itemsize, batch_size=batch_size, halves=halves,
                  pixel_size_A=pixel_size_A, driver=bool(driver))
    r_first = min(float(first_radius), box / 2)
    it1 = _iteration("first", first, coarse_radius=r_first, fine_radius=r_first, **common)
    itf = _iteration("final", final_sampling(first, auto_local_healpix_order), coarse_radius=box / 2,
                     fine_radius=box / 2, **common)
    one = particle_bytes(box, dtype)
    if available is None:
        resident = per_worker
    else:
        room = int(available) - max(it1.working, itf.working) - int(SAFETY_FRACTION * int(available))
        resident = max(0, min(per_worker, room // one))
    for it in (it1, itf):
        it.terms["particles"] = resident * one
    return MemoryPlan(int(box), float(pad), np.dtype(dtype).name, int(batch_size), per_worker, int(workers), it1, itf,
                      None if available is None else int(available), where, int(resident), bool(dask))
