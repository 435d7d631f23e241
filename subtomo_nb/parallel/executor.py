"""The E-step executor on a dask client (:class:`~subtomo_nb.refine.executor.EStepExecutor`).

The job layer builds one per job from its client and passes it to the driver (auto-refine,
VDAM); the drivers never import this package.
"""

from __future__ import annotations

import copy

import distributed
import numpy as np

from subtomo_nb.backend import Backend, get_backend
from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.parallel.estep import ParticleBatches, run_halves_estep
from subtomo_nb.refine.executor import BatchProgress, EStepRequest, HalfSetResult, split_by_batches

__all__ = ["DaskExecutor"]


class DaskExecutor:
    """Each half-set's E-step as one dask graph (:func:`~subtomo_nb.parallel.estep.run_halves_estep`).

    The particles are loaded by tasks and kept on the workers (:class:`ParticleBatches`): the
    batches of requests whose half-sets cover every particle are kept for the whole job (auto-
    refine's half-sets, VDAM's mini-batches once they hold every particle); others (smaller
    mini-batches, VDAM's classes) are loaded for their request and released after it. A request's
    ``back_project`` is not used: the workers always fill their partial back-projectors.

    The workers run the request's backend (``EStepRequest.backend``): each keeps its batches'
    particles on its device across iterations (uploaded once per worker; within the source's
    ``cache_bytes`` per worker, beyond it uploaded again every iteration), receives each half-set's
    reference once per iteration, and returns host copies of the per-particle results and the
    half-set sums only. The half-sets stay separate graphs. A reference the driver holds on its
    device comes down once per iteration; the reduced sums go back up to the driver's device
    (its M-step runs there).

    Parameters
    ----------
    client
        The dask client (:func:`subtomo_nb.parallel.get_client`).
    name
        Prefix of the task keys (shows on the dashboard).
    """

    def __init__(self, client: distributed.Client, name: str = "estep") -> None:
        self.client = client
        self.name = name
        self._kept: ParticleBatches | None = None

    def _batches_for(self, request: EStepRequest) -> tuple[ParticleBatches, bool]:
        """ParticleBatches of the request's half-sets, and whether to release them after the request."""
        halves = [np.asarray(h, dtype=np.int64).ravel() for h in request.halves]
        kept = self._kept
        if kept is not None and len(kept.halves) == len(halves) and all(
                np.array_equal(a, b) for a, b in zip(kept.halves, halves)):
            return kept, False
        src = request.source
        batches = ParticleBatches(self.client, src.particles, halves, tomograms=src.tomograms,
                                  batch_size=src.batch_size, dtype=src.dtype, name=self.name)
        if sum(len(h) for h in halves) == len(src):
            if kept is not None:
                kept.release()
            self._kept = batches
            return batches, False
        return batches, True

    @staticmethod
    def _host_references(request: EStepRequest, be: Backend) -> list[np.ndarray]:
        """The references as host maps (a device map of the driver comes down once; shared objects stay shared)."""
        seen: dict[int, np.ndarray] = {}
        for r in request.references:
            if id(r) not in seen:
                seen[id(r)] = be.to_host(r, "reference")
        return [seen[id(r)] for r in request.references]

    @staticmethod
    def _on_device(bp: BackProjector, be: Backend) -> BackProjector:
        """The half-set's reduced sums on the driver's device (one copy of each per iteration)."""
        if be.name == "numpy":
            return bp
        # the host back-projector's geometry with the sums uploaded: no zero-filled full-size
        # arrays made first (BackProjector(...) would allocate and zero both, then drop them)
        out = copy.copy(bp)
        out.backend, out.xp = be, be.xp
        out.data = be.to_device(bp.data, "sums")
        out.weight = be.to_device(bp.weight, "sums")
        out.rdtype, out.cdtype = out.weight.dtype, out.data.dtype
        out._scatter = None if bp._scatter is None else be.kernel("scatter_rotated")
        return out

    def run(self, request: EStepRequest, progress: BatchProgress | None = None) -> list[HalfSetResult]:
        """See :meth:`subtomo_nb.refine.executor.EStepExecutor.run`."""
        batches, release = self._batches_for(request)
        s = request.settings
        be = get_backend(request.backend)
        try:
            out = run_halves_estep(
                self.client, batches, self._host_references(request, be), sigma2=list(request.sigma2), progress=progress,
                sampling=request.sampling, prior_angles=request.prior_angles, origins_px=request.origins_px,
                pad=request.pad, r_max=request.r_max, dtype=request.source.dtype, ctf=request.ctf,
                pixel_size_A=s.pixel_size_A, coarse_radius=s.coarse_radius, fine_radius=s.fine_radius,
                sigma_offset_A=s.sigma_offset_A, firstiter_cc=s.firstiter_cc, adaptive_fraction=s.adaptive_fraction,
                max_significant=s.max_significant, backend=request.backend,
                device_bytes=request.source.cache_bytes)
            return [HalfSetResult(self._on_device(bp, be), split_by_batches(batches.rows(h), results))
                    for h, (bp, results) in enumerate(out)]
        finally:
            if release:
                batches.release()

    def release(self) -> None:
        """Release the kept batches (the workers free their particles and projectors)."""
        if self._kept is not None:
            self._kept.release()
            self._kept = None
