"""A directly run ``subtomo`` command records its job as RELION's pipeliner does.

Each command runs in a child process (``python -m subtomo_nb.cli.main`` on this checkout) in a copy
of the tiny project: the job directory gets ``job.star``, ``note.txt`` with the command as typed
(its real ``--j``), ``run.out`` opened with a header and closed with a finish line, and RELION's
exit marker. Refine also keeps the input's tomogram set in ``run_optimisation_set.star``, writes
project-relative names in its STAR files, and an ``_angdist.bild`` per half and iteration plus the
final one, whose cylinders are the directions its particles take.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.io.star import read_star
from subtomo_nb.jobs.jobdir import read_job

REPO = Path(__file__).resolve().parents[2]
HEADER = re.compile(r"^ \+\+\+\+ subtomo_nb version \S+: .+ in (\S+), started .+$")
FINISH = re.compile(r"^ \+\+\+\+ finished successfully at .+ after [0-9.]+ s$")
REFINE = ["refine", "--o", "Refine3D/job013/run", "--ios", "Extract/job_3d/optimisation_set.star",
          "--ref", "ground_truth/map_bin4.mrc", "--ini_high", "50", "--sym", "C6", "--particle_diameter", "230",
          "--healpix_order", "1", "--offset_range", "4", "--offset_step", "4", "--auto_ignore_angles",
          "--auto_iter_max", "1", "--j", "2"]
JOBS = {
    "extract": (["extract", "--ios", "optimisation_set.star", "--o", "Extract/job011", "--bin", "4", "--b", "32",
                 "--no_stack2d", "--j", "2"], "Extract/job011", "relion_tomo_subtomo"),
    "reconstruct": (["reconstruct", "--i", "Extract/job_3d/particles.star", "--o", "Reconstruct/job012/merged.mrc",
                     "--sym", "C6", "--j", "2"], "Reconstruct/job012", "relion_tomo_reconstruct_particle"),
    "refine": (REFINE, "Refine3D/job013", "relion_refine"),
}


@pytest.fixture(scope="module")
def project(tiny_project, tiny_extract_3d, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("record") / "project"
    shutil.copytree(tiny_project["project_dir"], root, ignore=shutil.ignore_patterns("job_2d"))
    return root


@pytest.fixture(scope="module")
def ran(project) -> dict[str, Path]:
    """Every command of :data:`JOBS`, run once in the project (the refine one is the slowest: seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    out = {}
    for name, (argv, job, _) in JOBS.items():
        proc = subprocess.run([sys.executable, "-m", "subtomo_nb.cli.main", *argv], cwd=project, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        out[name] = project / job
    return out


@pytest.mark.parametrize("name", list(JOBS))
def test_direct_command_writes_the_job_record(ran, name):
    argv, job, program = JOBS[name]
    d = ran[name]
    assert {"job.star", "note.txt", "run.out", "RELION_JOB_EXIT_SUCCESS"} <= {p.name for p in d.iterdir()}
    record = read_job(d)
    assert record.status == "succeeded" and record.values["nr_threads"] == 2
    note = (d / "note.txt").read_text()
    assert note.startswith(" ++++ Executing new job on ")
    relion_line = next(line for line in note.splitlines() if line.startswith(program))
    assert " --j 2" in relion_line and f" {job}/" in relion_line
    assert "subtomo " + " ".join(argv) in note                # the command as typed, --j 2 included
    lines = (d / "run.out").read_text().splitlines()
    m = HEADER.match(lines[0])
    assert m and m.group(1) == job + "/"
    assert lines[1] == " ++++ command: subtomo " + " ".join(argv)
    assert FINISH.match(lines[-1])


def _relative_names(d: Path) -> list[str]:
    """Every file name a refine STAR output holds (the labels RELION writes file names in)."""
    labels = ("rlnImageName", "rlnCtfImage", "rlnReferenceImage", "rlnTomoParticlesFile", "rlnTomoTomogramsFile",
              "rlnTomoReferenceMap1File", "rlnTomoReferenceMap2File", "rlnOutputRootName", "rlnModelStarFile",
              "rlnModelStarFile2", "rlnExperimentalDataStarFile", "rlnOrientSamplingStarFile")
    names = []
    for star in sorted(d.glob("run*.star")):
        for block in read_star(star).values():
            rows = [block] if isinstance(block, dict) else block.to_dict("records")
            for row in rows:
                names += [str(row[k]) for k in labels if k in row and str(row[k]) not in ("", "None")]
    return names


def test_refine_outputs_name_project_files_relative_to_it(ran, project):
    d = ran["refine"]
    oset = read_star(d / "run_optimisation_set.star")["optimisation_set"]
    assert oset["rlnTomoParticlesFile"] == "Refine3D/job013/run_data.star"
    assert oset["rlnTomoTomogramsFile"] == "tomograms.star"         # the input optimisation set's
    assert oset["rlnTomoReferenceMap1File"] == "Refine3D/job013/run_half1_class001_unfil.mrc"
    names = _relative_names(d)
    assert names and not [n for n in names if os.path.isabs(n.split("@")[-1])]
    for n in names:                     # each resolves in the project (the output root is a prefix)
        assert (project / n.split("@")[-1]).exists() or n == "Refine3D/job013/run", n
    model = read_star(d / "run_model.star")["model_classes"]
    assert list(model["rlnReferenceImage"]) == ["Refine3D/job013/run_class001.mrc"]


def _cylinders(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(colours (n, 3), cylinders (n, 7)) of a BILD file, checking each cylinder follows its colour."""
    colours, cylinders = [], []
    lines = path.read_text().splitlines()
    assert len(lines) % 2 == 0
    for colour, cylinder in zip(lines[::2], lines[1::2]):
        assert colour.startswith(".color ") and cylinder.startswith(".cylinder ")
        colours.append([float(x) for x in colour.split()[1:]])
        cylinders.append([float(x) for x in cylinder.split()[1:]])
    return np.array(colours), np.array(cylinders)


def test_refine_writes_angdist_bild_per_half_and_final(ran):
    from subtomo_nb.geometry.euler import euler_to_matrix
    from subtomo_nb.geometry.healpix import direction_vectors, sampling_directions
    from subtomo_nb.geometry.symmetry import point_group
    from subtomo_nb.io.mrc import read_map

    d = ran["refine"]
    for name in ("run_it000_half1_class001_angdist.bild", "run_it000_half2_class001_angdist.bild",
                 "run_class001_angdist.bild"):
        assert (d / name).is_file(), name
    _, pix = read_map(d / "run_class001.mrc")
    order = int(read_star(d / "run_sampling.star")["sampling_general"]["rlnHealpixOrder"])
    colours, cyl = _cylinders(d / "run_class001_angdist.bild")
    # the directions the particles take: each particle's nearest sampling direction, over C6 mates
    data = read_star(d / "run_data.star")["particles"]
    rot, tilt, _ = sampling_directions(order, "C6")
    grid = direction_vectors(rot, tilt)
    A = euler_to_matrix(data["rlnAngleRot"].to_numpy(float), data["rlnAngleTilt"].to_numpy(float), np.zeros(len(data)))
    view = A[:, 2, :]                                                  # Euler_angles2direction
    mates = np.einsum("gij,pj->gpi", np.asarray(point_group("C6")), view)
    nearest = np.einsum("gpi,di->gpd", mates, grid).max(axis=0).argmax(axis=1)
    counts = np.bincount(nearest, minlength=len(grid))
    taken = np.flatnonzero(counts)
    assert len(cyl) == len(taken) and len(cyl) > 1
    # RELION's geometry: from R to R (1 + 0.3 pdf / max pdf) along the direction, offset R, R = box * pixel / 2
    R = 32 * pix / 2.0
    start, end = cyl[:, :3] - R, cyl[:, 3:6] - R
    np.testing.assert_allclose(start, R * grid[taken], atol=2e-3 * R)
    np.testing.assert_allclose(end, (R + 0.3 * R * counts[taken] / counts.max())[:, None] * grid[taken], atol=2e-3 * R)
    np.testing.assert_allclose(cyl[:, 6], 0.5 * np.pi * R * (360.0 / (6 * 2 ** order)) / 360.0, rtol=1e-5)
    assert np.all((colours[:, 1] == 0) & (np.abs(colours[:, 0] + colours[:, 2] - 1) < 1e-5))


def test_a_command_run_inside_another_jobs_directory_leaves_its_record(ran, project):
    """`subtomo reconstruct --o Refine3D/job013/rec.mrc`: the refine job's job.star, note.txt, run.out
    and exit marker stay as they were; the map is written and a warning says why nothing is recorded."""
    d = ran["refine"]
    before = {name: (d / name).read_bytes() for name in ("job.star", "note.txt", "run.out", "RELION_JOB_EXIT_SUCCESS")}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, "-m", "subtomo_nb.cli.main", "reconstruct", "--i",
                           "Extract/job_3d/particles.star", "--o", "Refine3D/job013/rec.mrc", "--sym", "C6"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (d / "rec.mrc").is_file()
    assert "holds another job (relion.refine3d" in proc.stderr
    assert {name: (d / name).read_bytes() for name in before} == before
    assert read_job(d).job_type.name == "refine3d"
