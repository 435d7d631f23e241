"""The serial jobs' in-memory particle transforms equal reading them again."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from subtomo_nb.tasks.particle_data import TransformCache, load_particle_set, particle_transforms


def test_transform_cache_equals_reading_and_keeps_within_its_budget(tiny_extract_3d: Path) -> None:
    pset, tomograms = load_particle_set(tiny_extract_3d)
    n = len(pset.particles)
    rows = np.array([3, 0, 5, 3, 1]) % n   # a repeated row too
    origins = np.random.default_rng(0).uniform(-2, 2, (len(rows), 3))
    per_particle = sum(a[0].nbytes for a in particle_transforms(pset, rows[:1], tomograms=tomograms,
                                                                dtype=np.float32) if a is not None)
    cache = TransformCache(pset, tomograms, np.float32, max_bytes=2 * per_particle)
    for _ in range(2):   # first read, then (for two of them) from memory
        got = cache.shifted(rows, origins)
        want = particle_transforms(pset, rows, tomograms=tomograms, dtype=np.float32, origins=origins)
        for a, b in zip(got, want):
            if b is None:
                assert a is None
            else:
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
    assert 0 < cache.nbytes <= 2 * per_particle


def _held_bytes(cache: TransformCache) -> int:
    """Bytes of the numpy buffers the cache's entries keep alive (a view keeps its whole base)."""
    bases = {}
    for entry in cache._entries.values():
        for a in entry:
            if a is not None:
                base = a if a.base is None else a.base
                bases[id(base)] = base.nbytes
    return sum(bases.values())


def test_transform_cache_nbytes_is_the_memory_it_holds(tiny_extract_3d: Path) -> None:
    """Kept particles hold no more than ``nbytes``: a batch that only partly fits is not kept as views
    of the whole read (which would keep every particle of it in memory), one that fits whole is."""
    pset, tomograms = load_particle_set(tiny_extract_3d)
    rows = np.arange(4)
    per_particle = sum(a[0].nbytes for a in particle_transforms(pset, rows[:1], tomograms=tomograms,
                                                                dtype=np.float32) if a is not None)
    partial = TransformCache(pset, tomograms, np.float32, max_bytes=2 * per_particle)
    partial.raw(rows)
    assert len(partial._entries) == 2 and partial.nbytes == 2 * per_particle
    assert _held_bytes(partial) == partial.nbytes
    whole = TransformCache(pset, tomograms, np.float32, max_bytes=4 * per_particle)
    whole.raw(rows)
    assert len(whole._entries) == 4 and _held_bytes(whole) == whole.nbytes == 4 * per_particle
    np.testing.assert_array_equal(partial.raw(rows[:2])[0], whole.raw(rows[:2])[0])


def test_transform_cache_strict_copies_each_particle_once(tiny_extract_3d: Path) -> None:
    """On the strict device: the numpy cache's values, each particle copied once, origins shifted there."""
    from subtomo_nb.backend import get_backend

    pset, tomograms = load_particle_set(tiny_extract_3d)
    be = get_backend("strict")
    rows = np.array([3, 0, 5, 3, 1])
    origins = np.random.default_rng(0).uniform(-2, 2, (len(rows), 3))
    host = TransformCache(pset, tomograms, np.float32)
    cache = TransformCache(pset, tomograms, np.float32, backend="strict")
    be.transfers.reset()
    for _ in range(2):
        got = cache.shifted(rows, origins)
        want = host.shifted(rows, origins)
        for a, b in zip(got, want):
            if b is None:
                assert a is None
            else:
                assert be.owns(a)
                np.testing.assert_array_equal(be.to_host(a), b)
    uploads = be.transfers.copies("h2d", "particles")
    assert 0 < uploads <= 3   # data, CTF², multiplicity of the four distinct rows: in one read
    assert be.transfers.nbytes("h2d", "particles") == cache.nbytes == host.nbytes
    cache.shifted(rows[::-1], origins)
    assert be.transfers.copies("h2d", "particles") == uploads
