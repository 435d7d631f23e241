"""The dask client every parallel job runs on (design.md, "Execution with dask").

:func:`get_client` picks, in this order:

1. the client passed in (``client=``);
2. the client that is already current in this process (``distributed.default_client()``): a
   notebook user who made a ``Client(...)`` -- of a ``LocalCluster``, a dask-jobqueue
   ``SLURMCluster``, a ``dask scheduler`` started by hand, ... -- gets it back unchanged;
3. a new ``dask_cuda.LocalCUDACluster`` (one single-threaded worker per visible GPU) when
   ``gpu`` allows it and dask-cuda is installed and a GPU is visible (dask-cuda is imported only
   here, lazily: it is an optional extra);
4. a new ``distributed.LocalCluster`` with ``n_workers`` single-threaded worker *processes*
   (default: one per core). Processes, not threads: the E-step is numpy code that holds the GIL
   in places, and a process can die without taking the others with it.

Clients made in steps 3-4 are *owned* by subtomo_nb; :func:`close_if_owned` closes them (and their
cluster) and leaves any other client alone.

Running on an HPC cluster with dask-jobqueue (see ecosystem.md §3.5)::

    from dask_jobqueue import SLURMCluster
    from distributed import Client
    cluster = SLURMCluster(queue="gpu", cores=1, processes=1, memory="32GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"])
    cluster.scale(jobs=8)
    client = Client(cluster)          # now current: get_client() returns it
    # or pass it explicitly: get_client(client=client)
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from typing import Any

import distributed

__all__ = ["get_client", "close_if_owned", "gpu_count", "cuda_cluster_available"]

#: Clients created (and therefore closed) by :func:`get_client`.
_OWNED: "weakref.WeakSet[distributed.Client]" = weakref.WeakSet()


def gpu_count() -> int:
    """Number of CUDA devices visible to this process (0 when none, or no way to ask).

    Asks dask-cuda's helper when dask-cuda is installed, else cupy, else reports 0. Never raises.
    """
    try:
        from dask_cuda.utils import get_n_gpus  # type: ignore[import-not-found]

        return int(get_n_gpus())
    except Exception:
        pass
    try:
        import cupy  # type: ignore[import-not-found]

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def cuda_cluster_available() -> tuple[bool, str]:
    """Whether a ``LocalCUDACluster`` can be made here, and why not when it cannot.

    Returns
    -------
    (available, reason)
        ``reason`` is ``""`` when available, else a sentence naming what is missing
        (dask-cuda, or a visible GPU).
    """
    if importlib.util.find_spec("dask_cuda") is None:
        return False, "dask-cuda is not installed (pip install dask-cuda, or the subtomo_nb[gpu] extra)"
    if gpu_count() < 1:
        return False, "no CUDA GPU is visible to this process"
    return True, ""


def _current_client() -> distributed.Client | None:
    try:
        return distributed.default_client()
    except ValueError:
        return None


def get_client(
    n_workers: int | None = None,
    *,
    threads_per_worker: int = 1,
    gpu: str | bool = "auto",
    client: distributed.Client | None = None,
    **cluster_kwargs: Any,
) -> distributed.Client:
    """The dask client to run on: the user's if there is one, else a new local cluster.

    Parameters
    ----------
    n_workers
        Workers of a new cluster. CPU: default one per core (``os.cpu_count()``). GPU: default one
        per visible GPU (``CUDA_VISIBLE_DEVICES``). Ignored when an existing client is used.
    threads_per_worker
        Threads per worker of a new cluster. Keep 1 (one core or one GPU per process, as
        RELION's one-rank-per-GPU); more threads share one worker's memory.
    gpu
        ``"auto"``: a ``LocalCUDACluster`` when dask-cuda is installed and a GPU is visible, else
        a ``LocalCluster``. ``True``: require the GPU cluster (RuntimeError naming what is
        missing otherwise). ``False``: CPU ``LocalCluster`` even if GPUs are present.
    client
        A client to use as it is (e.g. of a dask-jobqueue ``SLURMCluster``); wins over
        everything else.
    **cluster_kwargs
        Passed to the new cluster's constructor (e.g. ``dashboard_address=":0"``,
        ``memory_limit="8GB"``; for ``LocalCUDACluster``: ``rmm_pool_size``,
        ``device_memory_limit``, ``protocol="ucx"``).

    Returns
    -------
    distributed.Client
        A client made here is registered as owned: close it with :func:`close_if_owned`.

    Notes
    -----
    Inside a script, a new ``LocalCluster`` with processes needs the ``if __name__ == "__main__":``
    guard (workers are spawned, not forked). Notebooks need nothing.
    """
    if client is not None:
        return client
    current = _current_client()
    if current is not None:
        return current
    if gpu not in ("auto", True, False):
        raise ValueError(f"gpu must be 'auto', True or False, not {gpu!r}")
    use_gpu = False
    if gpu is not False:
        ok, why = cuda_cluster_available()
        if gpu is True and not ok:
            raise RuntimeError(f"gpu=True but no GPU cluster can be made: {why}")
        use_gpu = ok
    if use_gpu:
        from dask_cuda import LocalCUDACluster  # type: ignore[import-not-found]

        kwargs = dict(threads_per_worker=threads_per_worker, **cluster_kwargs)
        if n_workers is not None:
            kwargs["n_workers"] = n_workers
        cluster = LocalCUDACluster(**kwargs)
    else:
        n = n_workers if n_workers is not None else max(os.cpu_count() or 1, 1)
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                                           processes=True, **cluster_kwargs)
    new = distributed.Client(cluster)
    _OWNED.add(new)
    return new


def is_owned(client: distributed.Client) -> bool:
    """True when ``client`` was created by :func:`get_client`."""
    return client in _OWNED


def close_if_owned(client: distributed.Client | None) -> bool:
    """Close ``client`` and its cluster if :func:`get_client` created them; leave others alone.

    Parameters
    ----------
    client
        Any client (or None).

    Returns
    -------
    bool
        True when something was closed.
    """
    if client is None or client not in _OWNED:
        return False
    _OWNED.discard(client)
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()
    return True
