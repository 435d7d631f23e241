"""What the batches of one iteration and half-set reuse: reference values, phase tables, orientation sums.

The E-step (:mod:`subtomo_nb.refine.expectation`) of every batch of an iteration and half-set
reads the same reference values (the coarse grid's, the fine orientations'), the same phases of
the coarse and fine translations, and, when it back-projects, adds particle-frame sums per fine
orientation that are back-projected once at the end. :class:`IterationCache` holds them, typed,
and knows which of them a dask worker's tasks may share (the values that depend on the reference
map, the sampling and the radii only) and which belong to one back-projector (the orientation
sums, back-projected by :meth:`IterationCache.flush`).

Everything a batch reads lives on the backend of the particle data (:mod:`subtomo_nb.backend`):
the reference rows and phase tables on the device, the slot tables of the coarse cache on the
host (they index host metadata: which orientations a batch's priors reach). Tables of host
metadata (Fourier selections, oversampled children of the coarse grid) are uploaded once per
iteration and kept here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from subtomo_nb.backend import Backend, backend_of
from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.healpix import oversampled_children, psi_step
from subtomo_nb.refine.estep import ReferenceTerms
from subtomo_nb.refine.sampling import OrientationGrid, Sampling

if TYPE_CHECKING:  # pragma: no cover
    from subtomo_nb.refine.expectation import FourierSelection

__all__ = ["ROTATION_CHUNK", "MAX_ROTATION_SUM_IDS", "reference_terms", "interpolate_rows", "CoarseReferenceCache",
           "CachedRows", "FineReferenceCache", "FineChildren", "RotationSums", "IterationCache",
           "projector_backend"]

#: Rotations interpolated (and scored, in the coarse pass) per chunk (bounds memory).
ROTATION_CHUNK = 256
#: Largest number of fine-orientation ids kept as dense particle-frame sums.
MAX_ROTATION_SUM_IDS = 12_000

_T = TypeVar("_T")


def projector_backend(projector: Projector) -> Backend:
    """The backend whose arrays ``projector`` holds (its reference transform's)."""
    return backend_of(projector.data)


def reference_terms(projector: Projector, rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray,
                    points: Any) -> ReferenceTerms:
    """:class:`ReferenceTerms` (``[Re V, Im V]``, ``|V|²``) of orientations ``(R,)`` at points ``(K, 3)``.

    Angles (degrees) on the host; ``points`` on the projector's backend. Filled chunk by chunk,
    so the complex values of all orientations are never held at once.
    """
    be = projector_backend(projector)
    A = euler_to_matrix(rot, tilt, psi)
    R, K = len(rot), int(points.shape[0])
    out = _LazyReferenceRows(R, K, projector.rdtype, be)
    interpolate_rows(out, projector, A, 0, points)
    return ReferenceTerms(stacked=out.stacked, power=out.power)


def interpolate_rows(out: "ReferenceTerms | _LazyReferenceRows", projector: Projector, A: Any,
                     start: int, points: Any) -> None:
    """Write the reference values at the orientations ``A`` (R, 3, 3) into rows ``start .. start+R-1`` of ``out``.

    ``A`` on the host or the projector's backend (uploaded as metadata); :data:`ROTATION_CHUNK`
    orientations at a time, through the projector's
    :meth:`~subtomo_nb.fourier.projector.Projector.sample_terms` (rows given on the host for
    numpy, on the device otherwise).
    """
    be = projector_backend(projector)
    xp = be.xp
    n = int(A.shape[0])
    if be.name == "numpy":
        rows = np.arange(start, start + n)
        for s in range(0, n, ROTATION_CHUNK):
            sl = slice(s, s + ROTATION_CHUNK)
            projector.sample_terms(A[sl], points, rows[sl], out.stacked, out.power)
        return
    A = be.to_device(A, "metadata")
    for s in range(0, n, ROTATION_CHUNK):
        e = min(s + ROTATION_CHUNK, n)
        rows = xp.arange(start + s, start + e, dtype=xp.int64, device=be.device)
        projector.sample_terms(A[s:e, ...], points, rows, out.stacked, out.power)


class _LazyReferenceRows:
    """``stacked`` ``[Re V, Im V]`` ``(rows, 2K)`` and ``power`` ``|V|²`` ``(rows, K)`` of a fixed grid
    of orientations, allocated empty: rows never written take no memory (on the host)."""

    def __init__(self, n_rows: int, n_points: int, rdtype: Any, be: Backend) -> None:
        xp = be.xp
        self.stacked = xp.empty((n_rows, 2 * n_points), dtype=rdtype, device=be.device)
        self.power = xp.empty((n_rows, n_points), dtype=rdtype, device=be.device)


class CoarseReferenceCache(_LazyReferenceRows):
    """Reference values of the coarse orientations of one iteration, interpolated when first needed.

    A search restricted by priors reaches a different set of orientations in each batch (or the
    same band, e.g. a tilt prior shared by all particles); the rows are interpolated once per
    iteration and reused by every batch. Orientations get rows (*slots*) in the order they are
    first reached, so the orientations of a batch are mostly consecutive rows, which the coarse
    pass reads as views instead of copies (all of them when every batch reaches the same band).
    ``(Rc, 2K)`` and ``(Rc, K)`` rows are reserved (on the projector's backend); the slot table
    is host metadata.
    """

    def __init__(self, n_coarse: int, n_points: int, rdtype: Any, be: Backend | None = None) -> None:
        self.be = be if be is not None else backend_of(np.empty(0))
        super().__init__(n_coarse, n_points, rdtype, self.be)
        self.slot = np.full(n_coarse, -1, dtype=np.int64)
        self.n_used = 0
        # a dask worker's tasks share the cache; with several threads per worker two batches
        # may fill at once, and slots must be handed out (and written) by one at a time
        self._lock = threading.Lock()

    @property
    def filled(self) -> np.ndarray:
        """``(Rc,)`` bool: which coarse orientations have their row."""
        return self.slot >= 0

    def fill(self, projector: Projector, grid: OrientationGrid, points: Any,
             rows: np.ndarray) -> "CachedRows":
        """Interpolate the ``rows`` (host indices into the coarse ``grid``) not filled yet.

        Returns
        -------
        The rows, in the order given, as the coarse pass reads them (:class:`CachedRows`).
        """
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            need = rows[self.slot[rows] < 0]
            if len(need):
                need = need[np.sort(np.unique(need, return_index=True)[1])]   # first-reached order
                interpolate_rows(self, projector, euler_to_matrix(*grid.angles(need)[:3]), self.n_used, points)
                self.slot[need] = np.arange(self.n_used, self.n_used + len(need))
                self.n_used += len(need)
            return CachedRows(self, self.slot[rows])


def _rows_of(a: Any, i: np.ndarray, be: Backend) -> Any:
    """``a[i]`` for host row indices ``i``: a view where they are consecutive, else a gather."""
    if len(i) and i[-1] - i[0] == len(i) - 1 and (len(i) == 1 or np.all(np.diff(i) == 1)):
        return a[int(i[0]):int(i[-1]) + 1, ...]
    return be.xp.take(a, be.to_device(i, "metadata"), axis=0)


@dataclass
class CachedRows:
    """Rows ``slots`` of a :class:`CoarseReferenceCache`, read as :class:`ReferenceTerms`."""

    cache: CoarseReferenceCache
    slots: np.ndarray

    def __len__(self) -> int:
        return len(self.slots)

    def rows(self, sl: slice) -> ReferenceTerms:
        """The orientations ``sl`` of this batch (views of consecutive cache rows, else copies)."""
        i = self.slots[sl]
        return ReferenceTerms(_rows_of(self.cache.stacked, i, self.cache.be),
                              _rows_of(self.cache.power, i, self.cache.be))

    @property
    def power(self) -> Any:
        """``|V|²`` of all rows ``(len(slots), K)``."""
        return _rows_of(self.cache.power, self.slots, self.cache.be)


#: Largest number of fine orientations (coarse grid × children) whose angles and matrices are
#: kept on the device for a whole iteration (:class:`FineChildren` of the grid); beyond it each
#: batch uploads the children of the orientations its priors reach.
FINE_CHILDREN_ROWS = 2_000_000


@dataclass
class FineChildren:
    """The oversampled children (fine orientations) of coarse orientations, uploaded for the device.

    Computed on the host from the coarse grid (host metadata) before the coarse pass, so the fine
    pass takes the children of the significant coarse orientations on the device with
    ``xp.take`` instead of bringing the significance back to the host.

    Attributes
    ----------
    rot, tilt, psi : ``(n·c,)`` angles (degrees), row ``i·c + child`` the children of table entry ``i``.
    matrices : ``(n·c, 3, 3)`` their rotation matrices (float64).
    n_child : children per coarse orientation ``c`` (8 for oversampling 1).
    """

    rot: Any
    tilt: Any
    psi: Any
    matrices: Any
    n_child: int

    @classmethod
    def of(cls, sampling: Sampling, grid: OrientationGrid, coarse_ids: np.ndarray, be: Backend) -> "FineChildren":
        """The children of the grid orientations ``coarse_ids`` (host), table entry ``i`` = ``coarse_ids[i]``."""
        _, _, psi_n, pix_n = grid.angles(np.asarray(coarse_ids, dtype=np.int64))
        frot, ftilt, fpsi = oversampled_children(pix_n, psi_n, sampling.healpix_order, sampling.oversampling,
                                                 psi_step(sampling.healpix_order))   # (n, c)
        c = int(frot.shape[-1])
        frot, ftilt, fpsi = frot.reshape(-1), ftilt.reshape(-1), fpsi.reshape(-1)
        A = euler_to_matrix(frot, ftilt, fpsi)
        up = (lambda a: be.to_device(np.ascontiguousarray(a), "metadata"))
        return cls(up(frot), up(ftilt), up(fpsi), up(A), c)


def n_children(sampling: Sampling, grid: OrientationGrid) -> int:
    """Fine orientations per coarse orientation of ``sampling`` (8 for oversampling 1)."""
    return int(oversampled_children(grid.pixel[:1], grid.psi[:1], sampling.healpix_order, sampling.oversampling,
                                    psi_step(sampling.healpix_order))[0].shape[-1])


class FineReferenceCache(_LazyReferenceRows):
    """Reference values of the fine orientations of one iteration, interpolated when first needed.

    Coarse orientation ``coarse`` (of the whole coarse grid) gets a slot when some particle
    first finds it significant; rows ``slot·8 + child`` then hold its children ``child``:
    ``stacked`` ``[Re V, Im V]`` ``(Rc·8, 2K)`` and ``power`` ``|V|²`` ``(Rc·8, K)``. Slots are
    handed out consecutively, so a fill writes consecutive rows. The slot table ``slot``
    ``(Rc,)`` (−1: not filled) lives on the backend: the fine pass reads it there.
    """

    def __init__(self, n_coarse: int, n_points: int, rdtype: Any, n_child: int = 8,
                 be: Backend | None = None) -> None:
        self.be = be if be is not None else backend_of(np.empty(0))
        super().__init__(n_coarse * n_child, n_points, rdtype, self.be)
        self.n_child = n_child
        self.slot = self.be.xp.full(n_coarse, -1, dtype=self.be.xp.int64, device=self.be.device)
        self.n_used = 0
        self._lock = threading.Lock()

    @property
    def filled(self) -> Any:
        """``(Rc,)`` bool: which coarse orientations have their rows."""
        return self.slot >= 0

    def fill(self, projector: Projector, children: FineChildren, entries: Any, coarse_ids: Any,
             points: Any) -> None:
        """Interpolate the children of the coarse orientations not filled yet.

        Parameters
        ----------
        children
            Fine orientations of a table of coarse orientations.
        entries
            ``(R,)`` device int: table rows (in ``children``) of the candidate coarse orientations.
        coarse_ids
            ``(R,)`` device int: their (distinct) indices into the coarse grid.
        points
            ``(K, 3)`` fine Fourier points (device).
        """
        be, xp = self.be, self.be.xp
        with self._lock:
            need = xp.take(self.slot, coarse_ids) < 0
            n = int(xp.sum(xp.astype(need, xp.int64)))
            if n == 0:
                return
            (pos,) = xp.nonzero(need)
            c = self.n_child
            child = xp.arange(c, dtype=xp.int64, device=be.device)
            rows = xp.reshape(xp.take(entries, pos)[:, None] * c + child[None, :], (-1,))
            A = xp.take(children.matrices, rows, axis=0)
            if be.name == "numpy":
                A = np.asarray(A)
            interpolate_rows(self, projector, A, self.n_used * c, points)
            new = self.n_used + xp.arange(n, dtype=xp.int64, device=be.device)
            be.scatter_add(self.slot, xp.take(coarse_ids, pos), new + 1)   # −1 → slot (distinct ids)
            self.n_used += n


class RotationSums:
    """Particle-frame sums per fine orientation, back-projected once (:meth:`flush`).

    Used while the orientation ids (coarse orientation × 8 children) are few enough for dense
    ``(n_ids, K)`` arrays: many particles of a half-set then share orientations (global searches),
    and the scatter into the 3D grid, the costly step, is done once per orientation instead of
    once per particle and orientation. The sums live on the backend of the particle data.
    """

    def __init__(self, backprojector: BackProjector, sel: "FourierSelection", n_ids: int, cdt: Any, rdt: Any,
                 be: Backend | None = None) -> None:
        self.be = be if be is not None else backend_of(np.empty(0))
        xp, dev = self.be.xp, self.be.device
        self.bp, self.sel = backprojector, sel
        K = len(sel.index)
        self.values = xp.zeros((n_ids, K), dtype=cdt, device=dev)
        self.weights = xp.zeros((n_ids, K), dtype=rdt, device=dev)
        self.A = xp.zeros((n_ids, 3, 3), dtype=xp.float64, device=dev)
        self.used = xp.zeros(n_ids, dtype=xp.bool, device=dev)

    def add(self, ids: Any, A: Any, values: Any, weights: Any) -> None:
        """Add the sums of the distinct orientation ids ``ids`` (device arrays)."""
        be, xp = self.be, self.be.xp
        be.scatter_add(self.values, ids, xp.astype(values, self.values.dtype, copy=False))
        be.scatter_add(self.weights, ids, xp.astype(weights, self.weights.dtype, copy=False))
        if be.name == "numpy":
            self.A[ids] = A
            self.used[ids] = True
            return
        new = be.bincount(ids, xp.ones(ids.shape, dtype=xp.float64, device=be.device), self.used.shape[0]) > 0
        placed = be.scatter_add(xp.zeros(self.A.shape, dtype=self.A.dtype, device=be.device), ids,
                                xp.astype(A, self.A.dtype, copy=False))
        self.A = xp.where(new[:, None, None], placed, self.A)
        self.used = self.used | new

    def flush(self) -> None:
        """Back-project every orientation that received data, then reset."""
        be, xp = self.be, self.be.xp
        (ids,) = xp.nonzero(self.used)
        n = int(ids.shape[0])
        for s in range(0, n, ROTATION_CHUNK):
            sl = ids[s:min(s + ROTATION_CHUNK, n)]
            self.bp.insert(xp.take(self.A, sl, axis=0), xp.take(self.values, sl, axis=0),
                           xp.take(self.weights, sl, axis=0), self.sel.device_points)
        self.values = xp.zeros_like(self.values)
        self.weights = xp.zeros_like(self.weights)
        self.used = xp.zeros_like(self.used)


def _shared() -> Any:
    return field(default_factory=dict, metadata={"shared": True})


@dataclass
class IterationCache:
    """The values every batch of one iteration and half-set reuses, each table keyed by what its
    entries depend on (sampling, radius, dtype), so a cache handed a different sampling builds anew.

    Attributes
    ----------
    coarse_references : {key: ReferenceTerms}
        Reference values of the whole coarse grid (global searches: the same for every batch).
    coarse_rows : {key: CoarseReferenceCache}
        Reference values of the coarse orientations searches restricted by priors reach, filled
        as batches first reach them.
    coarse_phases : {key: (T, K) complex}
        Phases of the coarse translations at the coarse pass's Fourier points.
    fine_references : {key: FineReferenceCache}
        Reference values of the fine (oversampled) orientations, filled when first significant.
    fine_phases : {key: (T·children, K) complex}
        Phases of every fine translation at the fine pass's Fourier points.
    selections : {key: FourierSelection}
        Fourier points of the coarse and fine passes, with their device copies.
    fine_children : {key: FineChildren}
        Oversampled children of the whole coarse grid (angles and matrices, on the device).
    rotation_sums : {key: RotationSums}
        Particle-frame sums per fine orientation, deferred for one back-projector: **not**
        shared, back-projected by :meth:`flush` after the last batch.

    Notes
    -----
    All but ``rotation_sums`` are functions of the reference map, the sampling and the radii
    only: a dask worker's tasks of the same iteration and half-set share them
    (:meth:`for_task`, :meth:`share_into`).
    """

    coarse_references: dict[tuple, ReferenceTerms] = _shared()
    coarse_rows: dict[tuple, CoarseReferenceCache] = _shared()
    coarse_phases: dict[tuple, Any] = _shared()
    fine_references: dict[tuple, FineReferenceCache] = _shared()
    fine_phases: dict[tuple, Any] = _shared()
    selections: dict[tuple, Any] = _shared()
    fine_children: dict[tuple, FineChildren] = _shared()
    rotation_sums: dict[tuple, RotationSums] = field(default_factory=dict, metadata={"shared": False})

    @classmethod
    def _shared_tables(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.metadata.get("shared")]

    def entry(self, table: dict[tuple, _T], key: tuple, make: Callable[[], _T]) -> _T:
        """``table[key]`` (one of this cache's tables), made by ``make()`` when missing."""
        if key not in table:
            table[key] = make()
        return table[key]

    def for_task(self) -> "IterationCache":
        """A cache for one task: the shareable tables' entries (the same objects), no sums."""
        return IterationCache(**{name: dict(getattr(self, name)) for name in self._shared_tables()})

    def share_into(self, shared: "IterationCache") -> None:
        """Add this cache's shareable entries that ``shared`` lacks to ``shared`` (sums stay here)."""
        for name in self._shared_tables():
            target = getattr(shared, name)
            for key, value in getattr(self, name).items():
                target.setdefault(key, value)

    def flush(self) -> None:
        """Back-project the deferred orientation sums (call after the iteration's last batch)."""
        for sums in self.rotation_sums.values():
            sums.flush()

    def rotation_sums_for(self, backprojector: BackProjector | None, selection: "FourierSelection",
                          n_coarse: int, cdt: Any, rdt: Any, be: Backend | None = None) -> RotationSums | None:
        """The :class:`RotationSums` of ``backprojector`` (None where not worthwhile or not back-projecting)."""
        if backprojector is None or n_coarse * 8 > MAX_ROTATION_SUM_IDS:
            return None
        return self.entry(self.rotation_sums, (n_coarse, len(selection.index), id(backprojector)),
                          lambda: RotationSums(backprojector, selection, n_coarse * 8, cdt, rdt, be))
