"""Reading never modifies the input files (bytes and modification times)."""

from __future__ import annotations

from pathlib import Path

from subtomo_nb.io.mrc import read_header, read_map
from subtomo_nb.io.optimisation_set import read_optimisation_set
from subtomo_nb.io.particles import check_files, read_particles
from subtomo_nb.io.star import read_star
from subtomo_nb.io.subtomo import read_particle_subtomo
from subtomo_nb.io.tomograms import read_tomograms


def _snapshot(root: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_reading_reference_files_changes_nothing(reference_dir, pseudo_dir):
    before = _snapshot(reference_dir)
    for star in sorted(reference_dir.rglob("*.star")):
        read_star(star)
    pset = read_particles(pseudo_dir / "particles.star")
    check_files(pset)
    for i in range(3):
        read_particle_subtomo(pset, i)
    read_tomograms(pseudo_dir / "tomograms.star")
    read_optimisation_set(pseudo_dir / "optimisation_set.star")
    read_header(pseudo_dir / "mask.mrc")
    read_map(pseudo_dir / "mask.mrc")
    after = _snapshot(reference_dir)
    assert list(after) == list(before)  # no file added or removed
    for path, (data, mtime) in before.items():
        assert after[path][0] == data, path
        assert after[path][1] == mtime, path
