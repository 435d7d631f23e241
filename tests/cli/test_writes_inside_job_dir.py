"""Every ``subtomo`` job writes only inside its own job directory.

Each command runs in a child process on a copy of the tiny project, with ``TMPDIR`` pointing at an
empty directory. Afterwards every file of the project that was added, changed or removed lies in
the job's directory, nothing was left in ``TMPDIR``, and the job directory holds no temporary
name (``.*.tmp``) and no scratch directory: maps, STAR files, the refine state, ``run.out`` /
``progress.jsonl``, the STAR reader's temporary files and the dask workers' spill space (refine
with ``--j 2`` starts a local cluster) all stay inside.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REFINE = ["refine", "--o", "Refine3D/job023/run", "--ios", "Extract/job_3d/optimisation_set.star",
          "--ref", "ground_truth/map_bin4.mrc", "--ini_high", "50", "--sym", "C6", "--particle_diameter", "230",
          "--healpix_order", "1", "--offset_range", "4", "--offset_step", "4", "--auto_ignore_angles",
          "--auto_iter_max", "1", "--j", "2"]
JOBS = [
    ("extract", ["extract", "--ios", "optimisation_set.star", "--o", "Extract/job020", "--bin", "4", "--b", "32",
                 "--no_stack2d", "--j", "2"], "Extract/job020"),
    ("reconstruct", ["reconstruct", "--i", "Extract/job_3d/particles.star", "--o", "Reconstruct/job021/merged.mrc",
                     "--sym", "C6", "--ctf", "--j", "2"], "Reconstruct/job021"),
    ("star-handler", ["star-handler", "--i", "Extract/job_3d/particles.star", "--o", "Select/job022/particles.star",
                      "--center", "--center_Z", "2"], "Select/job022"),
    ("refine", REFINE, "Refine3D/job023"),
    ("align-symmetry", ["align-symmetry", "--i", "ground_truth/map_bin4.mrc", "--o", "External/job024/aligned.mrc",
                        "--sym", "C6"], "External/job024"),
]


@pytest.fixture(scope="module")
def project(tiny_project, tiny_extract_3d, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("writes") / "project"
    shutil.copytree(tiny_project["project_dir"], root, ignore=shutil.ignore_patterns("job_2d"))
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("argv, job", [j[1:] for j in JOBS], ids=[j[0] for j in JOBS])
def test_job_writes_only_inside_its_job_directory(project, tmp_path, argv, job):
    systmp = tmp_path / "tmpdir"
    systmp.mkdir()
    env = dict(os.environ, TMPDIR=str(systmp),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    before = _snapshot(project)
    proc = subprocess.run([sys.executable, "-m", "subtomo_nb.cli.main", *argv], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    after = _snapshot(project)
    touched = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert touched, "the job wrote nothing"
    outside = sorted(name for name in touched if not name.startswith(job + "/"))
    assert outside == []
    assert list(systmp.iterdir()) == []
    leftovers = [p.name for p in (project / job).rglob(".*")]
    assert leftovers == []
