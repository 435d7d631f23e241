"""The E-step of one half-set as a dask graph (design.md, "Execution with dask").

Per job, once:

* :class:`ParticleBatches` splits each half-set's particle rows into fixed batches (in the order
  given) and submits one *load task* per batch that reads the batch's Fourier-space data on a
  worker (:func:`~subtomo_nb.tasks.particle_data.particle_transforms`, **unshifted**). The
  futures are kept, so the data stay on the workers across iterations; being tasks (not
  ``client.scatter``), a batch lost with its worker is simply read again.

Per iteration and half-set (:func:`run_half_estep`, :func:`run_halves_estep`):

* the half's reference map goes to the workers once, as a task holding the array (recomputable
  like everything else); each worker builds its :class:`~subtomo_nb.fourier.projector.Projector`
  once per iteration and half (a worker-local cache keyed by the reference task's key, which is
  new every iteration);
* one E-step task per batch: shift the batch's data by its particles' current origins
  (:func:`~subtomo_nb.fourier.fft.shift_half`, cheap), run
  :func:`~subtomo_nb.refine.expectation.expectation_batch` into a fresh back-projector, return
  the partial sums -- cropped to the inserted frequencies, which is all the back-projector can hold
  below ``r_max`` -- and the :class:`~subtomo_nb.refine.expectation.BatchResult`;
* the partial sums are added by a *fixed* binary tree over the batches in batch order, and the
  BatchResults gathered in batch order.

Nothing depends on which worker ran a task or on the order tasks finished: every task is a pure
function of its inputs and the tree is fixed, so a run where a worker died (and dask recomputed
what it held) gives bit-for-bit the same back-projector and results as an undisturbed run. The
two half-sets are separate graphs (their own loads, reference, partial sums) that never share
data: the gold standard.

The numerical core does not import this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import distributed
import numpy as np

from subtomo_nb._memory import keep_freed_memory
from subtomo_nb.backend import Backend, backend_of, get_backend
from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.fft import shift_half
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.io.particles import ParticleSet
from subtomo_nb.io.tomograms import TomogramSet, read_tomograms
from subtomo_nb.refine.expectation import (
    BatchResult,
    EStepSettings,
    IterationCache,
    ParticleBatch,
    expectation_batch,
    without_ctf,
)
from subtomo_nb.refine.sampling import Sampling
from subtomo_nb.tasks.particle_data import load_particle_set, particle_transforms

__all__ = [
    "ParticleBatches",
    "HalfEStep",
    "submit_half_estep",
    "run_half_estep",
    "run_halves_estep",
    "tree_sum_order",
]

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------
# worker-side functions (pure: same inputs -> same outputs, whatever the worker)
# ---------------------------------------------------------------------------------------------
def _particle_source(particles: PathLike | ParticleSet,
                     tomograms: PathLike | TomogramSet | None) -> tuple[ParticleSet, TomogramSet | None]:
    """The particle set and tomogram set, read on a worker when given as paths."""
    if isinstance(particles, ParticleSet):
        tomo = read_tomograms(tomograms) if isinstance(tomograms, (str, os.PathLike)) else tomograms
        return particles, tomo
    if isinstance(tomograms, TomogramSet):
        pset, _ = load_particle_set(particles, None)
        return pset, tomograms
    return load_particle_set(particles, tomograms)


def _load_batch(source: tuple[ParticleSet, TomogramSet | None], rows: np.ndarray,
                dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Unshifted half transforms, CTF² and multiplicities of one batch (runs on a worker)."""
    pset, tomograms = source
    return particle_transforms(pset, rows, tomograms=tomograms, apply_origins=False, dtype=dtype)


def _hold(value: Any) -> Any:
    """Identity: a task whose result is its (embedded, hence recomputable) argument."""
    return value


_PROJECTOR_LOCK = threading.Lock()
#: Worker-local projectors: (worker, stream) -> (reference key, Projector, the shareable part of
#: the iteration's cache (reference values and phases, the same for every batch of an iteration
#: and half), digest). ``stream`` is the job's batches token + half.
#: One entry per worker and stream, replaced when the stream's reference key changes (a new
#: iteration), so a worker holds at most one projector per half-set of each running job; the
#: digest of the reference lets streams with equal references share projector and cache. Keyed
#: by worker too, so that workers sharing a process (``LocalCluster(processes=False)``) each hold
#: their own, as separate processes do.
_PROJECTORS: dict[tuple[str, str], tuple[str, Projector, IterationCache, str]] = {}
#: Worker-local device copies of the particle batches: (worker, load key) -> (data, ctf2,
#: multiplicity) on the job's backend; uploaded once per worker, kept across iterations while the
#: worker's kept bytes stay within the job's budget (the host copy stays the load task's result,
#: which dask recomputes after a worker's death).
_DEVICE_BATCHES: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
#: Bytes of :data:`_DEVICE_BATCHES` per worker.
_DEVICE_BYTES: dict[str, int] = {}
#: Host->device copies each worker made, by kind (``"particles"``, ``"reference"``): the per-worker
#: view of :class:`~subtomo_nb.backend.TransferCounter`, read by :func:`_worker_uploads`.
_UPLOADS: dict[tuple[str, str], int] = {}


def _worker_name(dask_worker: Any = None) -> str:
    """This worker's address (``"local"`` outside a dask worker, e.g. a serial call).

    Functions run by ``client.run`` get their worker as ``dask_worker`` (``get_worker`` answers
    inside tasks only).
    """
    if dask_worker is not None:
        return str(dask_worker.address)
    try:
        return str(distributed.get_worker().address)
    except ValueError:
        return "local"


def _count_upload(kind: str, n: int = 1) -> None:
    key = (_worker_name(), kind)
    _UPLOADS[key] = _UPLOADS.get(key, 0) + n


def _worker_uploads(dask_worker: Any = None) -> dict[str, int]:
    """This worker's host->device copies by kind (``client.run`` it; diagnostics and tests)."""
    me = _worker_name(dask_worker)
    with _PROJECTOR_LOCK:
        return {kind: n for (w, kind), n in _UPLOADS.items() if w == me}


def _worker_projector(stream: str, ref_key: str, reference: np.ndarray, pad: float,
                      dtype: type, be: Backend | None = None) -> tuple[Projector, IterationCache]:
    """This worker's Projector of ``reference`` (built once per iteration and half) and its coarse cache.

    The reference goes to the worker's device here, once per iteration and half-set (counted as
    ``"reference"``). Streams whose references are equal (VDAM's two pseudo half-sets, the two
    halves of a first auto-refine iteration) share one projector and one cache of reference
    values: those are a function of the map alone, so they are uploaded and interpolated once per
    worker, not once per half.
    """
    be = get_backend("numpy") if be is None else be
    me = _worker_name()
    with _PROJECTOR_LOCK:
        entry = _PROJECTORS.get((me, stream))
        if entry is None or entry[0] != ref_key:
            _PROJECTORS.pop((me, stream), None)       # free the last iteration's before building
            ref = np.ascontiguousarray(np.asarray(reference).astype(dtype))
            digest = hashlib.blake2b(ref.tobytes() + f"|{pad}|{ref.dtype.str}|{be.name}".encode(),
                                     digest_size=16).hexdigest()
            twin = next((e for (w, _), e in _PROJECTORS.items() if w == me and e[3] == digest), None)
            if twin is not None:
                entry = (ref_key, twin[1], twin[2], digest)
            else:
                volume = be.to_device(ref, "reference")
                if be.name != "numpy":
                    _count_upload("reference")
                entry = (ref_key, Projector(volume, pad=pad), IterationCache(), digest)
            _PROJECTORS[(me, stream)] = entry
        return entry[1], entry[2]


def _device_batch(load_key: str, batch: tuple[np.ndarray, np.ndarray, np.ndarray | None],
                  be: Backend, budget: int | None = None) -> tuple[Any, Any, Any]:
    """The batch's arrays on this worker's device (numpy: as they are, host arrays, no copy).

    Uploaded on first use and kept while the bytes this worker keeps stay within ``budget`` (None:
    no limit); a batch beyond it is uploaded for this use only, every time it is scored (each
    upload counted as ``"particles"``).
    """
    if be.name == "numpy":
        return batch
    me = _worker_name()
    with _PROJECTOR_LOCK:
        held = _DEVICE_BATCHES.get((me, load_key))
        if held is not None:
            return held
        data, ctf2, mult = batch
        held = (be.to_device(data, "particles"), be.to_device(ctf2, "particles"),
                None if mult is None else be.to_device(mult, "particles"))
        _count_upload("particles")
        size = sum(_device_nbytes(a) for a in held if a is not None)   # as _forget_streams subtracts
        kept = _DEVICE_BYTES.get(me, 0)
        if budget is None or kept + size <= budget:
            _DEVICE_BATCHES[(me, load_key)] = held
            _DEVICE_BYTES[me] = kept + size
        return held


def _forget_streams(prefix: str, dask_worker: Any = None) -> int:
    """Drop this worker's projectors of the streams starting with ``prefix`` (a batches token) and
    its device copies of those batches; returns how many projectors."""
    me = _worker_name(dask_worker)
    token = prefix.rstrip("-")
    with _PROJECTOR_LOCK:
        gone = [k for k in _PROJECTORS if k[0] == me and k[1].startswith(prefix)]
        for k in gone:
            del _PROJECTORS[k]
        for k in [k for k in _DEVICE_BATCHES if k[0] == me and k[1].endswith(f"-{token}")]:
            _DEVICE_BYTES[me] = _DEVICE_BYTES.get(me, 0) - sum(
                _device_nbytes(a) for a in _DEVICE_BATCHES.pop(k) if a is not None)
    return len(gone)


def _device_nbytes(a: Any) -> int:
    """Bytes of an array of any backend."""
    return int(math.prod(a.shape)) * np.dtype(str(a.dtype).rsplit(".", 1)[-1]).itemsize


def _worker_device_bytes(dask_worker: Any = None) -> int:
    """Bytes of particle batches this worker keeps on its device (``client.run`` it; diagnostics and tests)."""
    with _PROJECTOR_LOCK:
        return _DEVICE_BYTES.get(_worker_name(dask_worker), 0)


def _cached_streams(dask_worker: Any = None) -> list[str]:
    """The streams this worker holds a projector for (``client.run`` it; diagnostics and tests)."""
    me = _worker_name(dask_worker)
    with _PROJECTOR_LOCK:
        return sorted(stream for w, stream in _PROJECTORS if w == me)


def crop_radius(padded: int, r_max: float, pad: float) -> int:
    """Half-width (padded voxels) of the corner block that holds every voxel an insertion reaches.

    Inserted points lie within ``pad * r_max`` of the origin and spread one voxel by trilinear
    splatting, so ``|kx|, |ky|, |kz| <= ceil(pad r_max) + 1``; one more voxel of margin is kept.
    Returns ``padded // 2`` (no cropping) when the block would not be smaller than the array.
    """
    r = int(math.ceil(pad * r_max)) + 2
    return r if 2 * r + 1 < padded else padded // 2


def _crop_index(padded: int, r: int) -> np.ndarray:
    if r >= padded // 2:
        return np.arange(padded)
    return np.concatenate([np.arange(r + 1), np.arange(padded - r, padded)])


def crop_half(arr: Any, r: int) -> Any:
    """The wrapped-layout corner block ``|ky|, |kz| <= r``, ``kx <= r`` of a padded half array,
    on the array's own backend (``xp.take`` along each axis)."""
    m = arr.shape[0]
    if r >= m // 2:
        return arr
    be = backend_of(arr)
    xp = be.xp
    i = be.to_device(_crop_index(m, r), "metadata")
    out = xp.take(xp.take(arr, i, axis=0), i, axis=1)
    return out[:, :, :r + 1]


def uncrop_half(block: np.ndarray, padded: int) -> np.ndarray:
    """Inverse of :func:`crop_half`: the block put back into a zero ``(M, M, M//2+1)`` array."""
    if block.shape[0] == padded:
        return block
    r = block.shape[2] - 1
    out = np.zeros((padded, padded, padded // 2 + 1), dtype=block.dtype)
    i = _crop_index(padded, r)
    out[np.ix_(i, i, np.arange(r + 1))] = block
    return out


@dataclass(frozen=True)
class _EStepParams:
    """Everything an E-step task needs besides its batch, reference and per-particle arrays."""

    stream: str
    ref_key: str
    sigma2: np.ndarray
    sampling: Sampling
    settings: EStepSettings
    pad: float
    r_max: float
    dtype: type
    ctf: bool
    backend: str = "numpy"
    #: bytes of particle batches a worker keeps on its device (None: every batch)
    device_bytes: int | None = None


def _estep_batch(batch: tuple[np.ndarray, np.ndarray, np.ndarray | None], load_key: str, reference: np.ndarray,
                 params: _EStepParams, prior_angles: np.ndarray,
                 origins_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, BatchResult]:
    """One batch's E-step on a worker: (cropped partial data, cropped partial weight, BatchResult), host arrays.

    Runs on the request's backend: the batch's particles are on the worker's device from their
    first E-step on (:func:`_device_batch`), the reference from the first batch of the iteration
    (:func:`_worker_projector`); only the cropped half-set sums and the per-particle results come
    back (``to_host``).
    """
    p = params
    be = get_backend(p.backend)
    keep_freed_memory()
    projector, shared_cache = _worker_projector(p.stream, p.ref_key, reference, p.pad, p.dtype, be)
    # the worker's tasks of this iteration and half share the reference values and phases; the
    # deferred orientation sums belong to this task's partial back-projector, flushed into it below
    cache = shared_cache.for_task()
    data, ctf2, mult = _device_batch(load_key, batch, be, p.device_bytes)
    # the same operation particle_transforms(..., origins=...) applies: shift by +origin
    origins = np.asarray(origins_px, dtype=np.float64)
    if be.name == "numpy":
        data = shift_half(data, origins).astype(data.dtype)
    else:
        data = be.xp.astype(shift_half(data, be.to_device(origins, "metadata")), data.dtype, copy=False)
    if not p.ctf:
        ctf2 = without_ctf(ctf2, mult)
    box = data.shape[1]
    bp = BackProjector(box, pad=p.pad, r_max=p.r_max, dtype=p.dtype, backend=be)
    res = expectation_batch(projector, ParticleBatch.of(data, ctf2, mult), p.sigma2, p.sampling, prior_angles,
                            p.settings, backprojector=bp, cache=cache)
    cache.flush()
    cache.share_into(shared_cache)
    r = crop_radius(bp.padded, bp.r_max, bp.pad)
    return be.to_host(crop_half(bp.data, r), "sums"), be.to_host(crop_half(bp.weight, r), "sums"), res.to_host(be)


def _add_partials(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``a + b`` of two partial sums (``(data, weight, ...)`` tuples); new arrays, inputs untouched."""
    return a[0] + b[0], a[1] + b[1]


# ---------------------------------------------------------------------------------------------
# client side
# ---------------------------------------------------------------------------------------------
def tree_sum_order(n: int) -> list[list[tuple[int, int]]]:
    """The fixed reduction tree over ``n`` leaves: per level, the pairs of positions added.

    Level 0 adds leaves ``(0, 1), (2, 3), ...``; an odd last element goes up unchanged; the next
    level pairs the results the same way. The tree depends only on ``n``, so the floating-point
    sum does not depend on which task finished first.
    """
    levels = []
    while n > 1:
        levels.append([(i, i + 1) for i in range(0, n - 1, 2)])
        n = (n + 1) // 2
    return levels


def _tree_reduce(client: distributed.Client, leaves: list[distributed.Future], prefix: str) -> distributed.Future:
    level = list(leaves)
    for depth, pairs in enumerate(tree_sum_order(len(leaves))):
        nxt = [client.submit(_add_partials, level[i], level[j], key=f"{prefix}-sum-l{depth}-{i // 2:04d}")
               for i, j in pairs]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class ParticleBatches:
    """Each half-set's particles in fixed batches, loaded once by tasks and kept on the workers.

    Parameters
    ----------
    client
        The dask client (see :func:`subtomo_nb.parallel.client.get_client`).
    particles
        Particle STAR file or optimisation set (read on a worker), or a :class:`ParticleSet`
        already in memory (sent once, inside the graph).
    halves
        0-based rows of the particle table of each half-set (``[rows_1, rows_2]``); batches are
        consecutive slices of each, in the order given.
    tomograms
        Tomogram set (path or :class:`TomogramSet`); needed for 2D-stack particles.
    batch_size
        Particles per batch (the last batch of a half may be smaller).
    dtype
        Real precision of the loaded data (``np.float32`` or ``np.float64``).
    name
        Prefix of the task keys (shows on the dashboard).

    Attributes
    ----------
    halves : list of (n_h,) int arrays
    batches : list (per half) of lists of row arrays
    futures : list (per half) of lists of futures of ``(data, ctf2, multiplicity)``, unshifted
    token : str -- unique id of this set of batches (part of every key)

    Notes
    -----
    The data stay on the workers as long as this object holds the futures; :meth:`release` (or
    dropping the object) frees them. A worker's death loses only its batches, which dask reads
    again when an E-step needs them.
    """

    def __init__(self, client: distributed.Client, particles: PathLike | ParticleSet,
                 halves: Sequence[np.ndarray], *, tomograms: PathLike | TomogramSet | None = None,
                 batch_size: int = 16, dtype: type = np.float32, name: str = "particles") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.client = client
        self.dtype = np.dtype(dtype).type
        self.batch_size = int(batch_size)
        self.token = uuid.uuid4().hex[:10]
        self.name = name
        self.halves = [np.asarray(h, dtype=np.int64).ravel() for h in halves]
        with _quiet_large_graph():
            self._source = client.submit(_particle_source, particles, tomograms,
                                         key=f"{name}-source-{self.token}")
        self.batches: list[list[np.ndarray]] = []
        self.futures: list[list[distributed.Future]] = []
        #: per half and batch, the worker the batch is placed on (None: anywhere). Batches go to
        #: the workers in turn and their E-step tasks follow them (loose restrictions: a batch of
        #: a worker that died is read again elsewhere), so the particles a worker copied to its
        #: device are the ones it scores in every iteration.
        self.placement: list[list[str | None]] = []
        workers = sorted(client.scheduler_info().get("workers", {}))
        n = 0
        for h, rows in enumerate(self.halves):
            rb = [rows[s:s + self.batch_size] for s in range(0, len(rows), self.batch_size)]
            self.batches.append(rb)
            where = [workers[(n + i) % len(workers)] if workers else None for i in range(len(rb))]
            n += len(rb)
            self.placement.append(where)
            self.futures.append([client.submit(_load_batch, self._source, r, self.dtype,
                                               key=f"{name}-load-h{h + 1}-b{i:04d}-{self.token}",
                                               **_placed(w))
                                 for i, (r, w) in enumerate(zip(rb, where))])

    @property
    def n_halves(self) -> int:
        """Number of half-sets (2 for a gold-standard refinement)."""
        return len(self.halves)

    def rows(self, half: int) -> np.ndarray:
        """Rows of half ``half`` (0-based) in batch order (the order of :func:`run_half_estep`'s results)."""
        return np.concatenate(self.batches[half]) if self.batches[half] else np.zeros(0, dtype=np.int64)

    def wait(self) -> None:
        """Block until every batch is loaded (raises the first load error, e.g. a missing file)."""
        futs = [f for half in self.futures for f in half]
        with self.client.as_current():          # wait() asks for the current client
            distributed.wait(futs)
        for f in futs:
            if f.status == "error":
                f.result()

    def release(self) -> None:
        """Drop the futures and the workers' cached projectors of this job: the workers free them."""
        for half in self.futures:
            for f in half:
                f.release()
        self._source.release()
        self.futures = [[] for _ in self.halves]
        self.batches = [[] for _ in self.halves]
        self.placement = [[] for _ in self.halves]
        if self.client.status == "running":
            self.client.run(_forget_streams, f"{self.token}-", on_error="ignore")


def _placed(worker: str | None) -> dict[str, Any]:
    """``submit`` keywords that prefer ``worker`` (a loose restriction) or nothing."""
    return {} if worker is None else {"workers": [worker], "allow_other_workers": True}


@contextlib.contextmanager
def _quiet_large_graph() -> Iterator[None]:
    """Silence distributed's "large object in task graph" warning around a submit.

    Embedding the object in the graph is deliberate: a task holding it can be recomputed after a
    worker dies, which scattered data cannot.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*[Ll]arge (object|graph).*")
        yield


class HalfEStep:
    """A submitted E-step of one half-set; :meth:`result` waits and assembles it.

    Attributes
    ----------
    half : int
    rows : (n,) int -- the half's rows in batch order
    """

    def __init__(self, half: int, rows: np.ndarray, box: int, pad: float, r_max: float, dtype: type,
                 root: distributed.Future | None, results: list[distributed.Future]) -> None:
        self.half = half
        self.rows = rows
        self._box, self._pad, self._r_max, self._dtype = box, pad, r_max, dtype
        self._root = root
        self._results = results

    @property
    def futures(self) -> list[distributed.Future]:
        """The futures of the BatchResults, in batch order (e.g. for progress bars)."""
        return list(self._results)

    def result(self, progress: Callable[[int, int], None] | None = None) -> tuple[BackProjector, list[BatchResult]]:
        """Wait for the half-set; returns its back-projector and the BatchResults in batch order.

        Parameters
        ----------
        progress
            Called as ``progress(done, total)`` as batches finish (in completion order; only the
            calls depend on it, not the results).
        """
        bp = BackProjector(self._box, pad=self._pad, r_max=self._r_max, dtype=self._dtype)
        if self._root is None:
            return bp, []
        client = self._root.client
        if progress is not None:
            for done, _ in enumerate(distributed.as_completed(self._results, loop=client.loop), start=1):
                progress(done, len(self._results))
        out = client.gather([self._root] + self._results)
        data, weight = out[0][0], out[0][1]
        bp.data = uncrop_half(np.asarray(data), bp.padded).astype(bp.cdtype, copy=False)
        bp.weight = uncrop_half(np.asarray(weight), bp.padded).astype(bp.rdtype, copy=False)
        return bp, list(out[1:])

    def release(self) -> None:
        """Forget the futures (the workers free the partial sums and results)."""
        for f in [self._root, *self._results]:
            if f is not None:
                f.release()


def submit_half_estep(
    client: distributed.Client,
    batches: ParticleBatches,
    half: int,
    reference_map: np.ndarray,
    *,
    sigma2: np.ndarray,
    sampling: Sampling,
    prior_angles: np.ndarray,
    origins_px: np.ndarray,
    pixel_size_A: float,
    coarse_radius: float,
    fine_radius: float,
    sigma_offset_A: float,
    pad: float = 2,
    r_max: float | None = None,
    firstiter_cc: bool = False,
    dtype: type | None = None,
    ctf: bool = True,
    adaptive_fraction: float = 0.999,
    max_significant: int | None = None,
    backend: str = "numpy",
    device_bytes: int | None = None,
) -> HalfEStep:
    """Submit the E-step graph of one half-set and return at once (see :func:`run_half_estep`)."""
    dtype = batches.dtype if dtype is None else np.dtype(dtype).type
    reference_map = np.asarray(reference_map)
    if reference_map.ndim != 3 or len(set(reference_map.shape)) != 1:
        raise ValueError(f"reference_map must be a cubic volume, got shape {reference_map.shape}")
    box = int(reference_map.shape[0])
    r_max = float(box // 2 if r_max is None else r_max)
    rows = batches.rows(half)
    prior_angles = np.asarray(prior_angles, dtype=np.float64)
    origins_px = np.asarray(origins_px, dtype=np.float64)
    for label, arr in (("prior_angles", prior_angles), ("origins_px", origins_px)):
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"{label} must be (n_particles, 3), indexed by particle row; got {arr.shape}")
        if len(rows) and rows.max() >= len(arr):
            raise ValueError(f"{label} has {len(arr)} rows but half {half} uses row {int(rows.max())}")
    if not batches.futures[half]:
        return HalfEStep(half, rows, box, pad, r_max, dtype, None, [])
    tok = uuid.uuid4().hex[:10]
    prefix = f"{batches.name}-estep-h{half + 1}-{tok}"
    ref_key = f"{batches.name}-reference-h{half + 1}-{tok}"
    with _quiet_large_graph():
        ref = client.submit(_hold, np.ascontiguousarray(reference_map, dtype=dtype), key=ref_key)
    settings = EStepSettings(
        pixel_size_A=float(pixel_size_A), coarse_radius=float(coarse_radius), fine_radius=float(fine_radius),
        sigma_offset_A=float(sigma_offset_A), adaptive_fraction=float(adaptive_fraction),
        firstiter_cc=bool(firstiter_cc), max_significant=None if max_significant is None else int(max_significant))
    params = _EStepParams(stream=f"{batches.token}-h{half}", ref_key=ref_key,
                          sigma2=np.asarray(sigma2, dtype=np.float64), sampling=sampling, settings=settings,
                          pad=pad, r_max=r_max, dtype=dtype, ctf=bool(ctf), backend=str(backend),
                          device_bytes=None if device_bytes is None else int(device_bytes))
    leaves, results = [], []
    for i, (load, idx, where) in enumerate(zip(batches.futures[half], batches.batches[half],
                                               batches.placement[half])):
        f = client.submit(_estep_batch, load, load.key, ref, params, prior_angles[idx], origins_px[idx],
                          key=f"{prefix}-b{i:04d}", **_placed(where))
        leaves.append(f)
        results.append(client.submit(operator.getitem, f, 2, key=f"{prefix}-result-b{i:04d}"))
    root = _tree_reduce(client, leaves, prefix)
    return HalfEStep(half, rows, box, pad, r_max, dtype, root, results)


def run_half_estep(
    client: distributed.Client,
    batches: ParticleBatches,
    half: int,
    reference_map: np.ndarray,
    *,
    sigma2: np.ndarray,
    sampling: Sampling,
    prior_angles: np.ndarray,
    origins_px: np.ndarray,
    pixel_size_A: float,
    coarse_radius: float,
    fine_radius: float,
    sigma_offset_A: float,
    pad: float = 2,
    r_max: float | None = None,
    firstiter_cc: bool = False,
    dtype: type | None = None,
    ctf: bool = True,
    adaptive_fraction: float = 0.999,
    max_significant: int | None = None,
    backend: str = "numpy",
    device_bytes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[BackProjector, list[BatchResult]]:
    """E-step of one half-set on the cluster: one task per batch, partial sums by a fixed tree.

    Parameters
    ----------
    client
        The dask client.
    batches
        The loaded batches (:class:`ParticleBatches`).
    half
        Which half-set (0-based index into ``batches.halves``).
    reference_map
        The half's current reference, real ``(N, N, N)``.
    sigma2
        ``(N//2+1,)`` the half's noise power per shell.
    sampling
        This iteration's sampling.
    prior_angles
        ``(n_particles, 3)`` rot, tilt, psi (degrees) of **every** particle row (indexed by row):
        the centres of the angular priors.
    origins_px
        ``(n_particles, 3)`` current origins (x, y, z) in pixels of every particle row; the data
        are shifted by ``+origin`` before scoring, as ``particle_transforms(..., origins=...)``.
    pixel_size_A, coarse_radius, fine_radius, sigma_offset_A, firstiter_cc, adaptive_fraction, max_significant
        As :class:`~subtomo_nb.refine.expectation.EStepSettings`.
    pad
        Padding factor of the projector and back-projector.
    r_max
        Largest frequency inserted into the back-projector (Fourier pixels); default ``N // 2``.
    dtype
        Precision of projector and back-projector; default that of the loaded batches.
    ctf
        False: replace CTF² by 1 where the multiplicity carries data (``--ctf`` off).
    backend
        The backend the workers run the E-step on (:func:`subtomo_nb.backend.get_backend`'s
        name): each worker uploads a batch's particles once and keeps them on its device, the
        reference once per iteration, and sends back only host copies of the cropped sums and
        the per-particle results.
    device_bytes
        Bytes of particle batches each worker keeps on its device (the memory plan's
        ``resident_bytes``): batches are kept, in the order a worker first scores them, while its
        kept bytes stay within it; the others are uploaded again every time they are scored.
        None: every batch is kept. Not used on numpy (the batches are the host arrays).
    progress
        ``progress(done, total)`` as batches finish.

    Returns
    -------
    (BackProjector, list of BatchResult)
        The half's sums (not symmetrised) and the per-batch results in batch order; the rows they
        belong to are ``batches.rows(half)``. ``BatchResult.shift_px`` is relative to
        ``origins_px``, exactly as for the serial E-step.

    Notes
    -----
    Bitwise reproducible for a given cluster configuration (any worker may run any task, in any
    order, any number of times). Against a serial loop in the client process the back-projector
    differs by float rounding only: the tree adds the batches in another order than a running
    sum, and BLAS in the (single-threaded) workers may round differently from a multi-threaded
    client.
    """
    job = submit_half_estep(client, batches, half, reference_map, sigma2=sigma2, sampling=sampling,
                            prior_angles=prior_angles, origins_px=origins_px, pixel_size_A=pixel_size_A,
                            coarse_radius=coarse_radius, fine_radius=fine_radius,
                            sigma_offset_A=sigma_offset_A, pad=pad, r_max=r_max, firstiter_cc=firstiter_cc,
                            dtype=dtype, ctf=ctf, adaptive_fraction=adaptive_fraction,
                            max_significant=max_significant, backend=backend, device_bytes=device_bytes)
    try:
        return job.result(progress)
    finally:
        job.release()


def run_halves_estep(
    client: distributed.Client,
    batches: ParticleBatches,
    references: Sequence[np.ndarray],
    *,
    sigma2: Sequence[np.ndarray],
    progress: Callable[[int, int, int], None] | None = None,
    **kwargs: Any,
) -> list[tuple[BackProjector, list[BatchResult]]]:
    """Both (all) half-sets at once: submitted together, computed concurrently, never sharing data.

    Parameters
    ----------
    client, batches
        As :func:`run_half_estep`.
    references, sigma2
        One reference map and one noise spectrum per half-set, in the order of ``batches.halves``.
    progress
        ``progress(half, done, total)`` as batches finish.
    **kwargs
        The other keyword arguments of :func:`run_half_estep` (shared by the halves:
        ``prior_angles`` and ``origins_px`` are indexed by particle row).

    Returns
    -------
    list of (BackProjector, list of BatchResult), one per half-set.
    """
    if len(references) != batches.n_halves or len(sigma2) != batches.n_halves:
        raise ValueError(f"need one reference and one sigma2 per half-set ({batches.n_halves})")
    jobs = [submit_half_estep(client, batches, h, references[h], sigma2=sigma2[h], **kwargs)
            for h in range(batches.n_halves)]
    try:
        if progress is not None:
            owner = {f.key: (j.half, len(j.futures)) for j in jobs for f in j.futures}
            count = {j.half: 0 for j in jobs}
            for f in distributed.as_completed([f for j in jobs for f in j.futures], loop=client.loop):
                h, total = owner[f.key]
                count[h] += 1
                progress(h, count[h], total)
        return [j.result() for j in jobs]
    finally:
        for j in jobs:
            j.release()
