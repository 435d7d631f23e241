"""Who runs an iteration's E-step: the protocol the drivers call, and the serial executor.

Auto-refine (:mod:`subtomo_nb.refine.autorefine`) and VDAM (:mod:`subtomo_nb.initial_model.vdam`)
describe one iteration's E-step as an :class:`EStepRequest` (references, noise, sampling, priors
and origins of every half-set) and hand it to an :class:`EStepExecutor`. :class:`SerialExecutor`
runs the batches one after the other in this process; ``subtomo_nb.parallel.DaskExecutor`` runs
them as one dask graph per half-set. The core never imports ``parallel``: the job layer builds
the dask executor and passes it in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from subtomo_nb.backend import get_backend
from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.io.tomograms import TomogramSet
from subtomo_nb.refine.expectation import BatchResult, EStepSettings, ParticleBatch, expectation_batch, without_ctf
from subtomo_nb.refine.iteration_cache import IterationCache
from subtomo_nb.refine.sampling import Sampling
from subtomo_nb.tasks.particle_data import TRANSFORM_CACHE_BYTES, TransformCache

__all__ = ["ParticleSource", "EStepRequest", "HalfSetResult", "BatchProgress", "EStepExecutor", "SerialExecutor"]

#: ``progress(half, batches_done, batches_total)``, called as batches finish (e.g.
#: :func:`subtomo_nb.refine.particle_progress.batch_counter`).
BatchProgress = Callable[[int, int, int], None]


@dataclass
class ParticleSource:
    """A job's particles, as the executors read them.

    Attributes
    ----------
    particles : the particle set (poses are not read from it: origins come with each request).
    tomograms : the tomogram set (needed for 2D-stack particles), or None.
    dtype : real precision of the data (``np.float32`` or ``np.float64``).
    batch_size : particles per batch (the last batch of a half-set holds the rest).
    backend : name of the job's backend (:func:`~subtomo_nb.backend.get_backend`).
    cache_bytes : byte budget of the particles kept on a device across iterations (the job's
        memory plan, :attr:`~subtomo_nb.refine.memory_plan.MemoryPlan.resident_bytes`): this
        process's :attr:`transforms` and each dask worker keep particles while they stay within it
        and re-read and copy the others every iteration. None: the default (this process:
        :data:`~subtomo_nb.tasks.particle_data.TRANSFORM_CACHE_BYTES`; dask workers: every batch).
    transforms : the unshifted transforms kept on this process's device (serial E-steps and the
        driver's own reads share them: copied there once, in the first iteration).
    """

    particles: ParticleSet
    tomograms: TomogramSet | None
    dtype: type
    batch_size: int
    backend: str = "numpy"
    cache_bytes: int | None = None
    transforms: TransformCache = field(init=False)

    def __post_init__(self) -> None:
        self.transforms = TransformCache(self.particles, self.tomograms, self.dtype, backend=self.backend,
                                         **({} if self.cache_bytes is None else {"max_bytes": self.cache_bytes}))

    def set_cache_bytes(self, nbytes: int | None) -> None:
        """Take a new :attr:`cache_bytes` (before the first read: what is kept already stays kept)."""
        self.cache_bytes = None if nbytes is None else int(nbytes)
        self.transforms.max_bytes = TRANSFORM_CACHE_BYTES if nbytes is None else int(nbytes)

    def __len__(self) -> int:
        return len(self.particles.particles)


@dataclass
class EStepRequest:
    """One iteration's E-step of every half-set.

    Attributes
    ----------
    source : the particles.
    halves : per half-set, its particle rows (0-based rows of the particle table).
    references : per half-set, the real ``(N, N, N)`` reference map: a device array of the
        request's backend for an in-process executor (:attr:`SerialExecutor.in_process`: used where
        it is, uncopied), the host map for executors whose workers are other processes (what they
        send them). The same object for half-sets that share a reference, as VDAM's pseudo
        half-sets: then its projector and cached reference values are shared too.
    sigma2 : per half-set, ``(N//2+1,)`` noise power per shell.
    sampling : this iteration's sampling.
    settings : radii, translation prior and significance (:class:`EStepSettings`).
    prior_angles : ``(n, 3)`` centres of the angular priors of every particle row (degrees).
    origins_px : ``(n, 3)`` current origins of every particle row (pixels); the data are shifted by
        ``+origin`` before scoring.
    pad : padding factor of projectors and back-projectors.
    r_max : largest frequency back-projected (Fourier pixels).
    ctf : False: CTF² replaced by 1 where the multiplicity carries data (``--ctf`` off).
    back_project : False: E-step only (the back-projectors come back empty; an executor may
        still fill them).
    backend : name of the backend the E-step runs on (:func:`~subtomo_nb.backend.get_backend`).
    """

    source: ParticleSource
    halves: Sequence[np.ndarray]
    references: Sequence[Any]
    sigma2: Sequence[np.ndarray]
    sampling: Sampling
    settings: EStepSettings
    prior_angles: np.ndarray
    origins_px: np.ndarray
    pad: float
    r_max: float
    ctf: bool = True
    back_project: bool = True
    backend: str = "numpy"

    @property
    def box(self) -> int:
        """Box size N (pixels)."""
        return int(self.references[0].shape[0])


@dataclass
class HalfSetResult:
    """The E-step of one half-set.

    Attributes
    ----------
    backprojector : its sums (not symmetrised), device arrays of the request's backend.
    batches : ``(rows, BatchResult)`` per batch, in the order the executor ran them; the results
        are host (numpy) arrays.
    """

    backprojector: BackProjector
    batches: list[tuple[np.ndarray, BatchResult]]


class EStepExecutor(Protocol):
    """What a driver needs from whoever runs its E-steps.

    An executor whose E-steps run in the driver's process says so with a true ``in_process``
    attribute (:class:`SerialExecutor`): the driver then hands it the references on its device.
    Without one (e.g. ``subtomo_nb.parallel.DaskExecutor``), it gets host maps to send to its workers.
    """

    def run(self, request: EStepRequest, progress: BatchProgress | None = None) -> list[HalfSetResult]:
        """Every half-set's E-step of one iteration; one :class:`HalfSetResult` per half-set, in order."""
        ...

    def release(self) -> None:
        """Free what the executor keeps between iterations (the job has ended)."""
        ...


def batch_rows(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``rows`` cut into consecutive batches of ``batch_size`` (the last holds the rest)."""
    return [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]


def split_by_batches(rows: np.ndarray, results: Sequence[BatchResult]) -> list[tuple[np.ndarray, BatchResult]]:
    """Pair consecutive slices of ``rows`` with the batch results they belong to (in order)."""
    bounds = np.cumsum([0] + [len(r.pmax) for r in results])
    return [(rows[a:b], r) for a, b, r in zip(bounds[:-1], bounds[1:], results)]


class SerialExecutor:
    """The E-step in this process: batch after batch, a running back-projector sum per half-set.

    Everything runs on the request's backend (one worker, one device): each half-set's reference
    is the driver's device array (no copy; a host map is copied there once, as ``"reference"``;
    once for half-sets given the same reference object), its projector and an
    :class:`IterationCache` are built there, the batches
    come from the source's device-resident transforms, and the back-projector sums stay there. Only
    the per-particle results come back to the host (``"results"``). In local searches the
    particles are batched by direction, so the union of their neighbourhoods (what a batch scores
    as one matrix product) stays small.
    """

    #: The E-steps run in the driver's process: it passes its device references as they are.
    in_process = True

    def run(self, request: EStepRequest, progress: BatchProgress | None = None) -> list[HalfSetResult]:
        """See :meth:`EStepExecutor.run`."""
        src = request.source
        be = get_backend(request.backend)
        dtype = src.dtype
        out = []
        projectors: list[tuple[Any, Projector, IterationCache]] = []
        for h, rows in enumerate(request.halves):
            reference = request.references[h]
            shared = next((p for p in projectors if p[0] is reference), None)
            if shared is None:
                volume = be.to_device(reference, "reference", dtype=be.dtype(dtype))
                shared = (reference, Projector(volume, pad=request.pad), IterationCache())
                projectors.append(shared)
            _, projector, cache = shared
            bp = BackProjector(request.box, pad=request.pad, r_max=request.r_max, dtype=dtype, backend=be)
            batches = batch_rows(self._order(request, rows), src.batch_size)
            results = []
            for i, idx in enumerate(batches):
                data, ctf2, mult = src.transforms.shifted(idx, request.origins_px[idx])
                if not request.ctf:
                    ctf2 = without_ctf(ctf2, mult)
                res = expectation_batch(projector, ParticleBatch.of(data, ctf2, mult), request.sigma2[h],
                                        request.sampling, request.prior_angles[idx], request.settings,
                                        backprojector=bp if request.back_project else None, cache=cache)
                results.append((idx, res.to_host(be)))
                if progress is not None:
                    progress(h, i + 1, len(batches))
            out.append(HalfSetResult(bp, results))
        for _, _, cache in projectors:
            cache.flush()
        return out

    @staticmethod
    def _order(request: EStepRequest, rows: np.ndarray) -> np.ndarray:
        """The half-set's rows in batch order: grouped by direction in local searches."""
        smp = request.sampling
        if not smp.is_local:
            return rows
        # in local searches the priors are the current angles
        rot, tilt = request.prior_angles[rows, 0], request.prior_angles[rows, 1]
        return rows[np.lexsort((rot, np.round(tilt / (3 * smp.coarse_step))))]

    def release(self) -> None:
        """Nothing is kept between iterations but the source's transforms (the driver's)."""
