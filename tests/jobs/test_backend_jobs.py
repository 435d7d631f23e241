"""SUBTOMO_BACKEND=strict through the jobs: the dask path of auto-refine on the strict test device.

Two iterations of ``subtomo refine --j 2`` on the tiny project, once on numpy and once with
``SUBTOMO_BACKEND=strict``: the strict run's workers score on array-api-strict's device (any host
copy inside an iteration would fail), ``run.out`` names the backend and what the workers run, and
the maps equal the numpy run's to 1e-4 relative and the poses are the same.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.cli.main import main
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star

pytest.importorskip("array_api_strict")
pytest.importorskip("distributed")

OS = "Extract/job_3d/optimisation_set.star"
REF = "ground_truth/map_bin4.mrc"


@pytest.fixture(scope="module")
def project(tiny_project, tiny_extract_3d, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("backend_jobs") / "project"
    shutil.copytree(tiny_project["project_dir"], root, ignore=shutil.ignore_patterns("job_2d"))
    return root


def _refine(project: Path, job: str) -> Path:
    argv = ["refine", "--ios", OS, "--ref", REF, "--o", f"Refine3D/{job}/run", "--particle_diameter", "230",
            "--sym", "C6", "--ini_high", "50", "--j", "2", "--auto_iter_max", "2"]
    assert main(argv) == 0
    return project / "Refine3D" / job


def test_refine_on_the_strict_backend_equals_numpy(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.delenv("SUBTOMO_BACKEND", raising=False)
    ref = _refine(project, "job001")
    monkeypatch.setenv("SUBTOMO_BACKEND", "strict")
    got = _refine(project, "job002")
    run_out = (got / "run.out").read_text()
    assert " ++++ backend: strict (array-api-strict, device1)" in run_out
    assert "workers run the strict test backend (array-api-strict, device1)" in run_out
    assert "memory plan per worker (2 workers)" in run_out
    assert " ++++ backend: numpy (CPU)" in (ref / "run.out").read_text()
    for name in ("run_it001_half1_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc",
                 "run_class001.mrc"):
        a, b = read_map(got / name)[0], read_map(ref / name)[0]
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), name
    poses = [read_star(d / "run_data.star")["particles"] for d in (got, ref)]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                  "rlnOriginZAngst"):
        np.testing.assert_allclose(poses[0][label], poses[1][label], atol=1e-3, err_msg=label)


def test_initial_model_on_the_strict_backend_equals_numpy(project, monkeypatch):
    """VDAM, 10 mini-batches, a 2-worker local cluster (``nr_threads`` 2), through ``run_job``: the
    strict run's maps equal numpy's to 1e-4 (the settings of tests/initial_model/test_vdam.py's
    strict acceptance run: C6 from the start, tilt prior 10°, at most 5 significant samples; float32
    E-step sums drift by ~3e-5 over the 10 mini-batches)."""
    from subtomo_nb.jobs.jobdir import run_job

    values = {"in_optimisation": OS, "particle_diameter": 230.0, "nr_iter": 10, "nr_threads": 2, "sym_name": "C6",
              "do_run_C1": False, "sigma_tilt": 10.0, "other_args": "--maxsig 5 --random_seed 1"}
    out = {}
    for backend in ("numpy", "strict"):
        monkeypatch.setenv("SUBTOMO_BACKEND", backend)
        out[backend] = run_job("initial_model", values, project)
    assert " ++++ backend: strict (array-api-strict, device1)" in (out["strict"] / "run.out").read_text()
    assert "memory plan per worker (2 workers)" in (out["strict"] / "run.out").read_text()
    for name in ("run_it010_class001.mrc", "initial_model.mrc"):
        a, b = read_map(out["strict"] / name)[0], read_map(out["numpy"] / name)[0]
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), name


def test_reconstruct_on_the_strict_backend_equals_numpy(project, monkeypatch):
    """subtomo reconstruct with SUBTOMO_BACKEND=strict: run.out names it; the merged map equals numpy's to 1e-4."""
    monkeypatch.chdir(project)
    maps = {}
    for backend in ("numpy", "strict"):
        monkeypatch.setenv("SUBTOMO_BACKEND", backend)
        out = Path("Reconstruct") / f"job_{backend}" / "merged.mrc"
        assert main(["reconstruct", "--i", "Extract/job_3d/particles.star", "--o", str(out), "--sym", "C6",
                     "--ctf"]) == 0
        maps[backend] = read_map(project / out)[0]
        assert f" ++++ backend: {'numpy (CPU)' if backend == 'numpy' else 'strict (array-api-strict, device1)'}" \
            in (project / out.parent / "run.out").read_text()
    assert np.abs(maps["strict"] - maps["numpy"]).max() <= 1e-4 * np.abs(maps["numpy"]).max()
