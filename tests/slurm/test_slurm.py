"""The auto-refine on a real (one-node, localhost) SLURM cluster through dask-jobqueue's SLURMCluster.

Each SLURM job is one dask worker (one process, one thread), started by slurmd from an ``sbatch``
script that dask-jobqueue writes; the refinement attaches to the cluster by its scheduler address
(``--scheduler_address``) and writes its files here. The results are compared to the same job on
a 2-worker LocalCluster, to the bit (every dask run with the same batches gives the same sums,
whatever worker ran what), and to the serial run (the same poses; the maps to rounding, since
the serial E-step adds the batches in another order).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star
from tests._refine_job import assert_same_refinement, refine_values, run_refine_job, worker_env

distributed = pytest.importorskip("distributed")


def _slurm_cluster(slurm, root: Path):
    """A SLURMCluster on the test's SLURM (one single-threaded worker per job), this checkout on PYTHONPATH."""
    from dask_jobqueue import SLURMCluster

    pythonpath = worker_env()["PYTHONPATH"]
    return SLURMCluster(queue=slurm.partition, cores=1, processes=1, memory="2GB", walltime="00:20:00",
                        python=sys.executable, log_directory=str(root / "logs"), local_directory=str(root / "dask"),
                        job_script_prologue=[f"export PYTHONPATH='{pythonpath}'", f"cd '{root}'"],
                        scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"},
                        worker_extra_args=["--host", "127.0.0.1"], death_timeout=60)


def _serial_equal(run: Path, serial: Path) -> None:
    """The same poses as the serial run; maps equal to rounding (another summation order)."""
    a = read_star(serial / "run_data.star")["particles"]
    b = read_star(run / "run_data.star")["particles"]
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"):
        np.testing.assert_allclose(b[col].to_numpy(float), a[col].to_numpy(float), rtol=0, atol=1e-6, err_msg=col)
    ma, _ = read_map(serial / "run_class001.mrc")
    mb, _ = read_map(run / "run_class001.mrc")
    np.testing.assert_allclose(mb, ma, rtol=0, atol=1e-5 * float(np.abs(ma).max()))


@pytest.mark.slow
def test_slurm_cluster_with_two_jobs(slurm, tiny_project, tiny_extract_3d, local_cluster_run, serial_run, tmp_path):
    with _slurm_cluster(slurm, tmp_path) as cluster:
        cluster.scale(jobs=2)
        with distributed.Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            running = [state for _, state in slurm.jobs()]
            job = run_refine_job(tmp_path, dict(refine_values(tiny_extract_3d, tiny_project["map"]),
                                                scheduler_address=cluster.scheduler_address))
            address = cluster.scheduler_address
    assert running == ["RUNNING", "RUNNING"], running
    assert f"dask scheduler {address}: 2 workers, 2 threads; workers run on the CPU (numpy)" in \
        (job / "run.out").read_text()
    assert list((tmp_path / "logs").glob("*.err")), "the workers did not run as SLURM jobs"
    assert_same_refinement(job, local_cluster_run)
    _serial_equal(job, serial_run)


@pytest.mark.slow
def test_scancel_of_one_job_mid_iteration(slurm, tiny_project, tiny_extract_3d, local_cluster_run, tmp_path):
    """``scancel`` of one of the two SLURM jobs while iteration 2's E-step runs: the refinement goes on
    on the other worker and ends with the same result, to the bit."""
    cancelled: list[str] = []
    iteration_1 = threading.Event()

    def progress(event):
        if event.iteration == 1:
            iteration_1.set()

    with _slurm_cluster(slurm, tmp_path) as cluster:
        cluster.scale(jobs=2)
        with distributed.Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            job_ids = {name: job.job_id for name, job in cluster.workers.items()}

            def canceller():
                if not iteration_1.wait(600):
                    return
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    busy = {w: len(t) for w, t in client.processing().items() if t}
                    if busy:
                        time.sleep(0.3)   # let the E-step tasks get going
                        victim = max(busy, key=busy.get)
                        name = client.scheduler_info()["workers"][victim]["name"]
                        slurm.scancel(job_ids[name])
                        cancelled.append(job_ids[name])
                        return
                    time.sleep(0.02)

            thread = threading.Thread(target=canceller, daemon=True)
            thread.start()
            job = run_job_with_progress(tmp_path, dict(refine_values(tiny_extract_3d, tiny_project["map"]),
                                                       scheduler_address=cluster.scheduler_address), progress)
            thread.join(5)
            left = [jid for jid, _ in slurm.jobs()]
    assert cancelled, "no SLURM job was cancelled during iteration 2"
    assert cancelled[0] not in left, (cancelled, left)
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    assert_same_refinement(job, local_cluster_run)


def run_job_with_progress(project_dir: Path, values: dict, progress) -> Path:
    """:func:`subtomo_nb.jobs.run_job` of the refine job with a progress callback."""
    from subtomo_nb.jobs import run_job

    return run_job("refine3d", values, project_dir, progress=progress)
