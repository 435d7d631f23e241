"""Jobs on a dask cluster started apart: ``dask scheduler --scheduler-file F`` + ``dask worker``, by hand.

The scheduler and its two worker processes are started here as separate programs (as a user, or
SLURM, would), with this checkout on their PYTHONPATH; the job attaches with
``--scheduler_file`` / ``--scheduler_address`` and writes its files here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from subtomo_nb.io.errors import InputError  # noqa: E402
from subtomo_nb.io.mrc import read_map  # noqa: E402
from subtomo_nb.jobs import get_job_type, validate  # noqa: E402
from subtomo_nb.parallel.client import attach_client, describe_cluster, job_client  # noqa: E402
from tests._refine_job import assert_same_refinement, refine_values, run_refine_job, worker_env  # noqa: E402


@pytest.fixture(scope="module")
def hand_cluster(tmp_path_factory):
    """``dask scheduler --scheduler-file F`` and ``dask worker --scheduler-file F --nworkers 2``; yields F."""
    root = Path(tmp_path_factory.mktemp("hand_cluster"))
    sched_file = root / "scheduler.json"
    env = worker_env()
    procs = []
    logs = []
    try:
        for argv, name in (
            ([sys.executable, "-m", "dask", "scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
              "--port", "0", "--dashboard-address", ":0"], "scheduler.log"),
            ([sys.executable, "-m", "dask", "worker", "--scheduler-file", str(sched_file), "--nworkers", "2",
              "--nthreads", "1", "--host", "127.0.0.1", "--local-directory", str(root / "workers")], "workers.log"),
        ):
            fh = open(root / name, "wb")
            logs.append(fh)
            procs.append(subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root))
            deadline = time.monotonic() + 60
            while not sched_file.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        with distributed.Client(scheduler_file=str(sched_file), timeout=60) as probe:
            probe.wait_for_workers(2, timeout=60)
        yield sched_file
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for fh in logs:
            fh.close()


def test_bad_scheduler_input_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="dask scheduler file not found") as err:
        attach_client(tmp_path / "missing.json")
    assert "\n" not in str(err.value) and "--scheduler_file" in str(err.value)
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(InputError, match="not a dask scheduler file"):
        attach_client(tmp_path / "bad.json")
    with pytest.raises(InputError, match="not both"):
        attach_client(tmp_path / "bad.json", "tcp://127.0.0.1:1")
    with pytest.raises(InputError, match="not a dask scheduler address"):
        attach_client(None, "http://127.0.0.1:1")
    with pytest.raises(InputError, match="no dask scheduler answers at tcp://127.0.0.1:9"):
        attach_client(None, "127.0.0.1:9", timeout=2)


def test_cli_error_is_one_line(tmp_path, capsys, monkeypatch, tiny_project, tiny_extract_3d):
    import subtomo_nb.parallel.client as client_module
    from subtomo_nb.cli.main import main

    monkeypatch.setattr(client_module, "ATTACH_TIMEOUT", 2.0)

    # the inputs pass the check before any work; the scheduler is what is wrong
    code = main(["reconstruct", "--i", str(tiny_extract_3d), "--o", str(tmp_path / "m.mrc"),
                 "--scheduler_file", str(tmp_path / "none.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and err.endswith("none.json: field --scheduler_file: file not found"), err
    code = main(["refine", "--ios", str(tiny_extract_3d.parent / "optimisation_set.star"), "--ref",
                 str(tiny_project["map"]), "--particle_diameter", "200", "--o",
                 str(tmp_path / "Refine3D" / "run"), "--scheduler_address", "tcp://127.0.0.1:9", "--j", "2"])
    err = capsys.readouterr().err.strip()
    # --j 2 with an address: no local cluster is made; the attach fails in one line
    assert code == 1 and err.count("\n") == 0 and "no dask scheduler answers at tcp://127.0.0.1:9 within 2 s" in err, err


def test_form_fields_and_validation(tmp_path):
    from subtomo_nb.widgets.forms import JobForm

    for name in ("refine3d", "initial_model", "reconstruct"):
        jt = get_job_type(name)
        assert {"scheduler_file", "scheduler_address"} <= {p.key for p in jt.tab_params("Running")}
        form = JobForm(name, tmp_path)
        assert form.fields["scheduler_file"].value == "" and form.fields["scheduler_address"].value == ""
    assert "scheduler_file" not in get_job_type("extract")
    sched = tmp_path / "scheduler.json"
    sched.write_text("{}")
    errors = validate("reconstruct", {"in_optimisation": "x.star", "scheduler_file": "scheduler.json",
                                      "scheduler_address": "tcp://h:1"}, project_dir=tmp_path)
    assert "not both" in errors["scheduler_address"]
    errors = validate("reconstruct", {"scheduler_file": "gone.json"}, project_dir=tmp_path)
    assert "file not found" in errors["scheduler_file"]


def test_gpu_workers_are_named_and_run_on_the_cpu():
    """A worker with a CUDA device (as LocalCUDACluster / dask_cuda.CUDAWorker make them) is reported
    as a GPU worker that runs the numpy E-step on the CPU."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  env={"CUDA_VISIBLE_DEVICES": "0"}) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        line = describe_cluster(client)
    assert line.startswith(f"dask scheduler {cluster.scheduler_address}: 1 worker, 1 thread;"), line
    assert "1 GPU worker" in line and "run on the CPU" in line


def test_job_client_attaches_reports_and_detaches(hand_cluster):
    lines = []
    address = json.loads(hand_cluster.read_text())["address"]
    with job_client({"scheduler_file": str(hand_cluster), "nr_threads": 4}, None, lines.append) as client:
        assert client.scheduler.address == address
        assert client.submit(sum, [1, 2], pure=False).result() == 3
    assert client.status == "closed"
    assert lines[0] == f"dask scheduler {address}: 2 workers, 2 threads; workers run on the CPU (numpy)"
    assert lines[1] == "--j 4 not used: the attached cluster's workers do the work"
    with distributed.Client(scheduler_file=str(hand_cluster), timeout=30) as probe:   # still running
        assert len(probe.scheduler_info()["workers"]) == 2


def test_reconstruct_on_the_attached_cluster(hand_cluster, tiny_extract_3d, tmp_path, capsys):
    from subtomo_nb.cli.main import main

    common = ["reconstruct", "--i", str(tiny_extract_3d), "--ctf", "--sym", "C6"]
    assert main(common + ["--o", str(tmp_path / "j1.mrc"), "--j", "1"]) == 0
    assert main(common + ["--o", str(tmp_path / "attached.mrc"), "--scheduler_file", str(hand_cluster)]) == 0
    out = capsys.readouterr().out
    assert "dask scheduler tcp://127.0.0.1:" in out and "2 workers" in out
    a, _ = read_map(tmp_path / "j1.mrc")
    b, _ = read_map(tmp_path / "attached.mrc")
    # the workers' parts are added in another order than one running sum: rounding only
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(np.abs(a).max()))


@pytest.mark.slow
def test_refine_on_the_hand_started_cluster_equals_a_local_cluster(hand_cluster, tiny_project, tiny_extract_3d,
                                                                   tmp_path):
    """The same job on the hand-started cluster (--scheduler_file) and on a LocalCluster given by its
    address (--scheduler_address): the same maps and poses to the bit; run.out names each scheduler."""
    values = refine_values(tiny_extract_3d, tiny_project["map"])
    attached = run_refine_job(tmp_path, dict(values, scheduler_file=str(hand_cluster)))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        local = run_refine_job(tmp_path, dict(values, scheduler_address=cluster.scheduler_address))
        local_address = cluster.scheduler_address
    run_out = (attached / "run.out").read_text()
    address = json.loads(hand_cluster.read_text())["address"]
    assert f"dask scheduler {address}: 2 workers, 2 threads; workers run on the CPU (numpy)" in run_out
    assert f"dask scheduler {local_address}: 2 workers" in (local / "run.out").read_text()
    assert_same_refinement(attached, local)


def test_initial_model_on_the_attached_cluster(hand_cluster, tiny_extract_3d, tmp_path, capsys):
    """``subtomo initial-model ... --scheduler_file F``: VDAM's E-steps on the hand-started workers."""
    from subtomo_nb.cli.main import main

    oset = Path(tiny_extract_3d).parent / "optimisation_set.star"
    common = ["initial-model", "--ios", str(oset), "--iter", "1", "--K", "1", "--sym", "C1",
              "--particle_diameter", "230", "--ctf", "--healpix_order", "1"]
    assert main(common + ["--o", str(tmp_path / "attached" / "run"), "--scheduler_file", str(hand_cluster)]) == 0
    assert main(common + ["--o", str(tmp_path / "serial" / "run")]) == 0
    capsys.readouterr()
    address = json.loads(hand_cluster.read_text())["address"]
    assert f"dask scheduler {address}: 2 workers" in (tmp_path / "attached" / "run.out").read_text()
    assert "dask scheduler" not in (tmp_path / "serial" / "run.out").read_text()
    a, _ = read_map(tmp_path / "serial" / "initial_model.mrc")
    b, _ = read_map(tmp_path / "attached" / "initial_model.mrc")
    np.testing.assert_allclose(b, a, atol=1e-5 * float(np.abs(a).max()), rtol=1e-4)
