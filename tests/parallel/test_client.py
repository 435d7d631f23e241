"""get_client: the user's client when there is one, else a LocalCluster (GPU path where possible)."""

from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed")

from subtomo_nb.parallel import close_if_owned, cuda_cluster_available, get_client  # noqa: E402
from subtomo_nb.parallel.client import is_owned  # noqa: E402


def test_a_users_cluster_that_steals_is_noted(cluster_client):
    """job_client names work stealing of a cluster it did not make (the session's LocalCluster keeps
    dask's default: stealing on)."""
    from subtomo_nb.parallel.client import STEALING_NOTE, job_client, work_stealing

    lines: list[str] = []
    with job_client({}, cluster_client, lines.append):
        pass
    assert work_stealing(cluster_client) is True
    assert STEALING_NOTE in lines and lines[0].startswith("dask scheduler ")


def test_a_cluster_made_by_get_client_does_not_steal_and_is_not_noted(cluster_client):
    from subtomo_nb.parallel.client import STEALING_NOTE, job_client, work_stealing

    client = get_client(1, gpu=False, dashboard_address=":0", silence_logs=40)
    try:
        assert work_stealing(client) is False
        lines: list[str] = []
        with job_client({}, client, lines.append):
            pass
        assert lines and lines[0].startswith("dask scheduler ") and STEALING_NOTE not in lines
    finally:
        assert close_if_owned(client) is True


@pytest.mark.parametrize("value, entries", [
    (None, None), ("", []), ("-1", []), ("NoDevFiles", []), ("2, 3", ["2", "3"]),
    ("GPU-8f0a,MIG-4e1b", ["GPU-8f0a", "MIG-4e1b"]), ("1,-1,0", ["1"]),
])
def test_cuda_visible_devices_is_parsed_once_for_workers_and_gpu_numbers(monkeypatch, value, entries):
    """One parser (backend.gpus.cuda_visible_devices) behind a worker's GPU flag and the --gpu mapping."""
    from subtomo_nb.backend.gpus import cuda_visible_devices, worker_visible_devices
    from subtomo_nb.parallel.client import _worker_device

    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert cuda_visible_devices() == entries
    got = _worker_device()
    assert got["gpu"] is bool(entries) and got["cuda_visible_devices"] == ",".join(entries or [])
    if entries:
        assert worker_visible_devices((len(entries) - 1,)) == entries[-1]


def test_explicit_and_current_client_are_returned(cluster_client):
    assert get_client(client=cluster_client) is cluster_client
    with cluster_client.as_current():
        assert get_client() is cluster_client
        assert get_client(4, gpu=True) is cluster_client     # an existing client wins over everything
    assert not is_owned(cluster_client)
    assert close_if_owned(cluster_client) is False
    assert cluster_client.status == "running"


def test_local_cluster_when_no_client(cluster_client):
    # the session's cluster client is not the default one, so nothing is current here
    with pytest.raises(ValueError):
        distributed.default_client()
    client = get_client(1, gpu=False, dashboard_address=":0", silence_logs=40)
    try:
        assert isinstance(client.cluster, distributed.LocalCluster)
        assert is_owned(client)
        info = client.scheduler_info()["workers"]
        assert len(info) == 1 and all(w["nthreads"] == 1 for w in info.values())
        # no work stealing: a batch stays on the worker that holds its particles
        assert client.run_on_scheduler(lambda dask_scheduler: "stealing" in dask_scheduler.extensions) is False
        from subtomo_nb.parallel.client import work_stealing

        assert work_stealing(client) is False
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert get_client() is client                          # now it is the current client
    finally:
        assert close_if_owned(client) is True
    assert client.status == "closed"
    assert close_if_owned(client) is False


def test_gpu_cluster_without_dask_cuda_or_gpu_is_refused_in_one_line():
    from subtomo_nb.io.errors import InputError

    ok, why = cuda_cluster_available()
    if ok:
        pytest.skip("a GPU cluster can be made here; the error path does not apply")
    for gpu in (True, [0], [0, 1]):
        with pytest.raises(InputError, match=r"^field --gpu: a GPU cluster cannot be made: ") as info:
            get_client(gpu=gpu)
        assert "\n" not in str(info.value) and why in str(info.value)


def test_cuda_cluster_arguments_one_worker_per_named_gpu(monkeypatch):
    """The LocalCUDACluster arguments of a --gpu list (dask-cuda and 4 GPUs faked)."""
    import subtomo_nb.backend.gpus as gpus
    import subtomo_nb.parallel.client as client
    from subtomo_nb.io.errors import InputError

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(client, "cuda_cluster_available", lambda: (True, ""))
    monkeypatch.setattr(gpus, "visible_gpu_count", lambda: 4)
    assert client.gpu_count() == 4
    assert client.cuda_cluster_kwargs([2, 0]) == {"CUDA_VISIBLE_DEVICES": "2,0", "n_workers": 2}
    assert client.cuda_cluster_kwargs(None) == {}          # every GPU: dask-cuda reads the environment
    with pytest.raises(InputError, match="GPU 4 is not visible"):
        client.cuda_cluster_kwargs([1, 4])
    # --gpu counts this process's visible devices: mapped through its CUDA_VISIBLE_DEVICES
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert client.cuda_cluster_kwargs([0, 1]) == {"CUDA_VISIBLE_DEVICES": "4,5", "n_workers": 2}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb,MIG-cc,3")
    assert client.cuda_cluster_kwargs([2, 3]) == {"CUDA_VISIBLE_DEVICES": "MIG-cc,3", "n_workers": 2}


def test_local_cuda_cluster_one_worker_per_gpu():
    ok, why = cuda_cluster_available()
    if not ok:
        pytest.skip(f"LocalCUDACluster path not testable here: {why}")
    from subtomo_nb.parallel.client import gpu_count

    client = get_client(gpu=True, dashboard_address=":0")
    try:
        assert type(client.cluster).__name__ == "LocalCUDACluster"
        assert len(client.scheduler_info()["workers"]) == gpu_count()
    finally:
        close_if_owned(client)
