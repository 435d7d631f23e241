"""What the batches of one iteration and half-set reuse: reference values, phase tables, orientation sums.

The E-step (:mod:`subtomo_nb.refine.expectation`) of every batch of an iteration and half-set
reads the same reference values (the coarse grid's, the fine orientations'), the same phases of
the coarse and fine translations, and, when it back-projects, adds particle-frame sums per fine
orientation that are back-projected once at the end. :class:`IterationCache` holds them, typed,
and knows which of them a dask worker's tasks may share (the values that depend on the reference
map, the sampling and the radii only) and which belong to one back-projector (the orientation
sums, back-projected by :meth:`IterationCache.flush`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.healpix import oversampled_children, psi_step
from subtomo_nb.refine._kernels import add_rows
from subtomo_nb.refine.estep import ReferenceTerms
from subtomo_nb.refine.sampling import OrientationGrid, Sampling

if TYPE_CHECKING:  # pragma: no cover
    from subtomo_nb.refine.expectation import FourierSelection

__all__ = ["ROTATION_CHUNK", "MAX_ROTATION_SUM_IDS", "reference_terms", "interpolate_rows", "CoarseReferenceCache",
           "CachedRows", "FineReferenceCache", "RotationSums", "IterationCache"]

#: Rotations interpolated (and scored, in the coarse pass) per chunk (bounds memory).
ROTATION_CHUNK = 256
#: Largest number of fine-orientation ids kept as dense particle-frame sums.
MAX_ROTATION_SUM_IDS = 12_000

_T = TypeVar("_T")


def reference_terms(projector: Projector, rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray,
                    points: np.ndarray) -> ReferenceTerms:
    """:class:`ReferenceTerms` (``[Re V, Im V]``, ``|V|²``) of orientations ``(R,)`` at points ``(K, 3)``.

    Filled chunk by chunk, so the complex values of all orientations are never held at once.
    """
    A = euler_to_matrix(rot, tilt, psi)
    R, K = len(rot), len(points)
    rdt = projector.rdtype
    out = ReferenceTerms(stacked=np.empty((R, 2 * K), dtype=rdt), power=np.empty((R, K), dtype=rdt))
    interpolate_rows(out, projector, A, None, points)
    return out


def interpolate_rows(out: "ReferenceTerms | _LazyReferenceRows", projector: Projector, A: np.ndarray,
                      rows: np.ndarray | None, points: np.ndarray) -> None:
    """Write the reference values at the orientations ``A`` (R, 3, 3) into ``rows`` of ``out``.

    ``rows`` None means rows ``0 .. R-1``. :data:`ROTATION_CHUNK` orientations at a time (the
    array path forms their complex values first).
    """
    rows = np.arange(len(A)) if rows is None else np.asarray(rows)
    for s in range(0, len(A), ROTATION_CHUNK):
        sl = slice(s, s + ROTATION_CHUNK)
        projector.sample_terms(A[sl], points, rows[sl], out.stacked, out.power)


class _LazyReferenceRows:
    """``stacked`` ``[Re V, Im V]`` ``(rows, 2K)`` and ``power`` ``|V|²`` ``(rows, K)`` of a fixed grid
    of orientations, allocated empty: rows never written take no memory."""

    def __init__(self, n_rows: int, n_points: int, rdtype: type) -> None:
        self.stacked = np.empty((n_rows, 2 * n_points), dtype=rdtype)
        self.power = np.empty((n_rows, n_points), dtype=rdtype)


class CoarseReferenceCache(_LazyReferenceRows):
    """Reference values of the coarse orientations of one iteration, interpolated when first needed.

    A search restricted by priors reaches a different set of orientations in each batch (or the
    same band, e.g. a tilt prior shared by all particles); the rows are interpolated once per
    iteration and reused by every batch. Orientations get rows (*slots*) in the order they are
    first reached, so the orientations of a batch are mostly consecutive rows, which the coarse
    pass reads as views instead of copies (all of them when every batch reaches the same band).
    ``(Rc, 2K)`` and ``(Rc, K)`` rows are reserved; only those written take memory.
    """

    def __init__(self, n_coarse: int, n_points: int, rdtype: type) -> None:
        super().__init__(n_coarse, n_points, rdtype)
        self.slot = np.full(n_coarse, -1, dtype=np.int64)
        self.n_used = 0
        # a dask worker's tasks share the cache; with several threads per worker two batches
        # may fill at once, and slots must be handed out (and written) by one at a time
        self._lock = threading.Lock()

    @property
    def filled(self) -> np.ndarray:
        """``(Rc,)`` bool: which coarse orientations have their row."""
        return self.slot >= 0

    def fill(self, projector: Projector, grid: OrientationGrid, points: np.ndarray,
             rows: np.ndarray) -> "CachedRows":
        """Interpolate the ``rows`` (indices into the coarse ``grid``) not filled yet.

        Returns
        -------
        The rows, in the order given, as the coarse pass reads them (:class:`CachedRows`).
        """
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            need = rows[self.slot[rows] < 0]
            if len(need):
                need = need[np.sort(np.unique(need, return_index=True)[1])]   # first-reached order
                slots = np.arange(self.n_used, self.n_used + len(need))
                interpolate_rows(self, projector, euler_to_matrix(*grid.angles(need)[:3]), slots, points)
                self.slot[need] = slots
                self.n_used += len(need)
            return CachedRows(self, self.slot[rows])


def _rows_of(a: np.ndarray, i: np.ndarray) -> np.ndarray:
    """``a[i]``: a view where ``i`` are consecutive rows, else a copy."""
    if len(i) and i[-1] - i[0] == len(i) - 1 and (len(i) == 1 or np.all(np.diff(i) == 1)):
        return a[i[0]:i[-1] + 1]
    return np.take(a, i, axis=0)


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
        return ReferenceTerms(_rows_of(self.cache.stacked, i), _rows_of(self.cache.power, i))

    @property
    def power(self) -> np.ndarray:
        """``|V|²`` of all rows ``(len(slots), K)``."""
        return _rows_of(self.cache.power, self.slots)


class FineReferenceCache(_LazyReferenceRows):
    """Reference values of the fine orientations of one iteration, interpolated when first needed.

    Row ``coarse·8 + child`` holds the child ``child`` of coarse orientation ``coarse`` (of the
    whole coarse grid): ``stacked`` ``[Re V, Im V]`` ``(Rc·8, 2K)`` and ``power`` ``|V|²``
    ``(Rc·8, K)``. Rows are filled for the coarse orientations some particle found significant.
    """

    def __init__(self, n_coarse: int, n_points: int, rdtype: type, n_child: int = 8) -> None:
        super().__init__(n_coarse * n_child, n_points, rdtype)
        self.n_child = n_child
        self.filled = np.zeros(n_coarse, dtype=bool)

    def __getitem__(self, i: int) -> np.ndarray:
        return (self.stacked, self.power)[i]

    def fill(self, projector: Projector, sampling: Sampling, grid: OrientationGrid,
             points: np.ndarray, coarse_ids: np.ndarray) -> None:
        """Interpolate the children of ``coarse_ids`` (indices into the coarse grid) not filled yet."""
        need = np.unique(np.asarray(coarse_ids, dtype=np.int64))
        need = need[~self.filled[need]]
        if len(need) == 0:
            return
        _, _, psi_n, pix_n = grid.angles(need)
        frot, ftilt, fpsi = oversampled_children(pix_n, psi_n, sampling.healpix_order,
                                                 sampling.oversampling, psi_step(sampling.healpix_order))
        c = frot.shape[-1]
        if c != self.n_child:
            raise ValueError(f"{c} children per coarse orientation, the cache was made for {self.n_child}")
        A = euler_to_matrix(frot.reshape(-1), ftilt.reshape(-1), fpsi.reshape(-1))
        interpolate_rows(self, projector, A, (need[:, None] * c + np.arange(c)).reshape(-1), points)
        self.filled[need] = True


class RotationSums:
    """Particle-frame sums per fine orientation, back-projected once (:meth:`flush`).

    Used while the orientation ids (coarse orientation × 8 children) are few enough for dense
    ``(n_ids, K)`` arrays: many particles of a half-set then share orientations (global searches),
    and the scatter into the 3D grid, the costly step, is done once per orientation instead of
    once per particle and orientation.
    """

    def __init__(self, backprojector: BackProjector, sel: "FourierSelection", n_ids: int, cdt: type, rdt: type) -> None:
        self.bp, self.sel = backprojector, sel
        self.values = np.zeros((n_ids, len(sel.index)), dtype=cdt)
        self.weights = np.zeros((n_ids, len(sel.index)), dtype=rdt)
        self.A = np.zeros((n_ids, 3, 3))
        self.used = np.zeros(n_ids, dtype=bool)

    def add(self, ids: np.ndarray, A: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Add the sums of the distinct orientation ids ``ids``."""
        add_rows(self.values, ids, values.astype(self.values.dtype, copy=False))
        add_rows(self.weights, ids, weights.astype(self.weights.dtype, copy=False))
        self.A[ids] = A
        self.used[ids] = True

    def flush(self) -> None:
        """Back-project every orientation that received data, then reset."""
        ids = np.flatnonzero(self.used)
        for s in range(0, len(ids), ROTATION_CHUNK):
            sl = ids[s:s + ROTATION_CHUNK]
            self.bp.insert(self.A[sl], self.values[sl], self.weights[sl], self.sel.points)
        self.values[:] = 0
        self.weights[:] = 0
        self.used[:] = False


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
    coarse_phases: dict[tuple, np.ndarray] = _shared()
    fine_references: dict[tuple, FineReferenceCache] = _shared()
    fine_phases: dict[tuple, np.ndarray] = _shared()
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
                          n_coarse: int, cdt: type, rdt: type) -> RotationSums | None:
        """The :class:`RotationSums` of ``backprojector`` (None where not worthwhile or not back-projecting)."""
        if backprojector is None or n_coarse * 8 > MAX_ROTATION_SUM_IDS:
            return None
        return self.entry(self.rotation_sums, (n_coarse, len(selection.index), id(backprojector)),
                          lambda: RotationSums(backprojector, selection, n_coarse * 8, cdt, rdt))
