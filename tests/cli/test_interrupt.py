"""SIGINT, SIGTERM or SIGKILL in the middle of a refine iteration: nothing is lost.

``subtomo refine`` runs in a child process on the tiny project (3D pseudo-subtomograms, two
iterations). Once iteration 1 has finished (its ``run_it001_state.npz``, written last, is there)
the child gets the signal while iteration 2 runs. Then:

* every file under a final name is whole (each is written under a temporary name and renamed):
  all ``run_it000*`` / ``run_it001*`` STAR files and maps read back, and no final map exists;
* SIGINT / SIGTERM end with exit 130 / 143, one line on stderr and the continue hint in run.out;
* ``subtomo refine --continue run_it001_optimiser.star`` in the same job directory ends with the
  map of the undisturbed run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star

REPO = Path(__file__).resolve().parents[2]
OPTIONS = ["--ios", "Extract/job_3d/optimisation_set.star", "--ref", "ground_truth/map_bin4.mrc",
           "--ini_high", "50", "--sym", "C6", "--particle_diameter", "230", "--healpix_order", "1",
           "--offset_range", "4", "--offset_step", "4", "--auto_ignore_angles", "--auto_iter_max", "2",
           "--random_seed", "1", "--j", "1"]
TIMEOUT_S = 600


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("SUBTOMO_DEBUG", None)
    return env


def _subtomo(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "subtomo_nb.cli.main", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def project(tiny_project, tiny_extract_3d, tmp_path_factory) -> Path:
    """The tiny project without its picks and 2D stacks: the extracted 3D particles, reference, tomograms."""
    root = tmp_path_factory.mktemp("interrupt") / "project"
    src = Path(tiny_project["project_dir"])
    shutil.copytree(src / "Extract" / "job_3d", root / "Extract" / "job_3d")
    shutil.copytree(src / "ground_truth", root / "ground_truth")
    shutil.copy(src / "tomograms.star", root / "tomograms.star")
    shutil.copytree(src / "tilt_series", root / "tilt_series")
    return root


@pytest.fixture(scope="module")
def undisturbed(project) -> np.ndarray:
    proc = _subtomo("refine", "--o", "Refine3D/job100/run", *OPTIONS, cwd=project)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    return read_map(project / "Refine3D/job100/run_class001.mrc")[0]


def _check_whole(job: Path) -> None:
    """Every STAR file and map under a final name reads back; only hidden temporary names may be partial."""
    for path in sorted(job.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix == ".star":
            read_star(path)
        elif path.suffix == ".mrc":
            read_map(path)
        elif path.suffix == ".npz":
            with np.load(path) as z:
                z.files
    assert not (job / "run_class001.mrc").exists()    # stopped before the end


# SIGINT in the fast suite (~12 s on 2 cores after the shared undisturbed run); SIGTERM and SIGKILL nightly
@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGKILL, marks=pytest.mark.slow)], ids=lambda s: s.name)
def test_signal_mid_iteration_then_continue_gives_the_undisturbed_map(project, undisturbed, sig):
    job = project / "Refine3D" / f"job1{sig.value:02d}"
    proc = _subtomo("refine", "--o", f"{job.relative_to(project)}/run", *OPTIONS, cwd=project)
    t0 = time.monotonic()
    while not (job / "run_it001_state.npz").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() - t0 < TIMEOUT_S
        time.sleep(0.05)
    time.sleep(0.3)                                      # iteration 2 is under way
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    _check_whole(job)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        what = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
        assert proc.returncode == (130 if sig == signal.SIGINT else 143)
        assert err.splitlines()[-1] == f"subtomo refine: {what}; finished outputs are intact"
        assert "Traceback" not in err
        last = (job / "run.out").read_text().splitlines()[-1]
        assert last.startswith(f" ++++ {what}; the last finished iteration is ")
        assert last.endswith(f"continue with subtomo refine --continue {job.relative_to(project)}/run_it00"
                             f"{last.split('iteration is ')[1][0]}_optimiser.star --o {job.relative_to(project)}/run")
        assert not (job / ".scratch").exists()           # the job's scratch space is gone
    resume = _subtomo("refine", "--continue", f"{job.relative_to(project)}/run_it001_optimiser.star",
                      "--o", f"{job.relative_to(project)}/run", cwd=project)
    out, err = resume.communicate(timeout=TIMEOUT_S)
    assert resume.returncode == 0, err
    again = read_map(job / "run_class001.mrc")[0]
    np.testing.assert_allclose(again, undisturbed, rtol=0, atol=1e-6 * float(np.abs(undisturbed).max()))
