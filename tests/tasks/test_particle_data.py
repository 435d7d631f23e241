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
