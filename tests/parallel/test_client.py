"""get_client: the user's client when there is one, else a LocalCluster (GPU path where possible)."""

from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed")

from subtomo_nb.parallel import close_if_owned, cuda_cluster_available, get_client  # noqa: E402
from subtomo_nb.parallel.client import is_owned  # noqa: E402


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
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert get_client() is client                          # now it is the current client
    finally:
        assert close_if_owned(client) is True
    assert client.status == "closed"
    assert close_if_owned(client) is False


def test_gpu_required_but_absent_raises():
    ok, why = cuda_cluster_available()
    if ok:
        pytest.skip("a GPU cluster can be made here; the error path does not apply")
    with pytest.raises(RuntimeError, match="no GPU cluster"):
        get_client(gpu=True)
    assert why


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
