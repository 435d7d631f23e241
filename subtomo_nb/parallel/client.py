"""The dask client every parallel job runs on (design.md, "Execution with dask").

:func:`get_client` picks, in this order:

1. the client passed in (``client=``);
2. the client that is already current in this process (``distributed.default_client()``): a
   notebook user who made a ``Client(...)`` -- of a ``LocalCluster``, a dask-jobqueue
   ``SLURMCluster``, a ``dask scheduler`` started by hand, ... -- gets it back unchanged;
3. with ``gpu`` (the jobs' ``--gpu``): a new ``dask_cuda.LocalCUDACluster``, one single-threaded
   worker per selected GPU (``CUDA_VISIBLE_DEVICES`` from the list, each number mapped through this
   process's own ``CUDA_VISIBLE_DEVICES``); refused in one line when dask-cuda or the GPUs are
   missing (dask-cuda is imported only here, lazily: an optional extra);
4. otherwise a new ``distributed.LocalCluster`` with ``n_workers`` single-threaded worker *processes*
   (default: one per core). Processes, not threads: the E-step is numpy code that holds the GIL
   in places, and a process can die without taking the others with it.

The clusters made in steps 3-4 run without work stealing: the E-step places each batch on the
worker that holds its particles, and a stolen batch would be loaded again on the thief (its
device memory beyond the job's memory plan). A user's own cluster keeps its setting;
:func:`job_client` notes it when stealing is on.

Clients made in steps 3-4 are *owned* by subtomo_nb; :func:`close_if_owned` closes them (and their
cluster) and leaves any other client alone.

A job can also attach to a dask cluster started elsewhere (:func:`attach_client`, the jobs'
``--scheduler_file`` / ``--scheduler_address``): the scheduler file that ``dask scheduler
--scheduler-file F`` or dask-jobqueue's ``SLURMRunner`` writes, or the address of a running
scheduler (``SLURMCluster(...).scheduler_address``). :func:`job_client` opens such a client for
the length of one job and reports what it runs on (:func:`describe_cluster`) in ``run.out``.

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

import contextlib
import importlib.util
import os
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import distributed

from subtomo_nb.io.errors import InputError

__all__ = ["get_client", "close_if_owned", "gpu_count", "cuda_cluster_available", "attach_client",
           "describe_cluster", "job_client", "scheduler_of", "worker_count", "cuda_cluster_kwargs",
           "work_stealing"]

#: Seconds to wait for an attached scheduler (and for its first worker) before giving up.
ATTACH_TIMEOUT = 30.0

#: URL schemes of dask scheduler addresses (``distributed.comm`` protocols).
_SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://", "inproc://")

#: Clients created (and therefore closed) by :func:`get_client`.
_OWNED: "weakref.WeakSet[distributed.Client]" = weakref.WeakSet()


def gpu_count() -> int:
    """Number of CUDA devices visible to this process (0 when none, or no way to ask); never raises.

    :func:`subtomo_nb.backend.gpus.visible_gpu_count` (cupy's count, else dask-cuda's).
    """
    from subtomo_nb.backend.gpus import visible_gpu_count

    return visible_gpu_count()


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
    gpu: bool | Sequence[int] | None = False,
    client: distributed.Client | None = None,
    **cluster_kwargs: Any,
) -> distributed.Client:
    """The dask client to run on: the user's if there is one, else a new local cluster.

    Parameters
    ----------
    n_workers
        Workers of a new CPU cluster (default one per core, ``os.cpu_count()``). A GPU cluster
        has one worker per GPU; ``n_workers`` is ignored there. Ignored when an existing client is
        used.
    threads_per_worker
        Threads per worker of a new cluster. Keep 1 (one core or one GPU per process, as
        RELION's one-rank-per-GPU); more threads share one worker's memory.
    gpu
        False or None: a CPU ``LocalCluster``. True: a ``LocalCUDACluster`` with one worker per
        visible GPU (dask-cuda reads ``CUDA_VISIBLE_DEVICES`` itself). A sequence of device
        numbers (the jobs' ``--gpu 0,1``, counting this process's visible devices): one worker
        per device named, ``CUDA_VISIBLE_DEVICES`` set from them, mapped through this process's
        own (each worker sees its own GPU first, as cupy's device 0). A GPU cluster needs
        dask-cuda and a visible GPU:
        :class:`~subtomo_nb.io.errors.InputError` (field ``--gpu``) naming what is missing.
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
    with dask.config.set({"distributed.scheduler.work-stealing": False}):   # read when the scheduler starts
        if gpu is None or gpu is False:
            n = n_workers if n_workers is not None else max(os.cpu_count() or 1, 1)
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                                               processes=True, **cluster_kwargs)
        else:
            cluster = _cuda_cluster(None if gpu is True else [int(g) for g in gpu], threads_per_worker,
                                    cluster_kwargs)
    new = distributed.Client(cluster)
    _OWNED.add(new)
    return new


def cuda_cluster_kwargs(devices: Sequence[int] | None) -> dict[str, Any]:
    """``LocalCUDACluster`` arguments of one worker per GPU of ``devices`` (None: every visible GPU).

    ``devices`` count this process's visible devices (as ``--gpu``); each is mapped through this
    process's ``CUDA_VISIBLE_DEVICES`` (:func:`subtomo_nb.backend.gpus.worker_visible_devices`).
    None leaves ``CUDA_VISIBLE_DEVICES`` to dask-cuda, which reads the environment.

    Raises
    ------
    InputError
        dask-cuda missing, no GPU visible, an empty list, or a device number not visible.
    """
    from subtomo_nb.backend.gpus import select_gpus, worker_visible_devices

    ok, why = cuda_cluster_available()
    if not ok:
        raise InputError(None, what=f"a GPU cluster cannot be made: {why}", field="--gpu")
    if devices is None:
        return {}
    gpus = select_gpus(list(devices))
    return {"CUDA_VISIBLE_DEVICES": worker_visible_devices(gpus), "n_workers": len(gpus)}


def _cuda_cluster(devices: list[int] | None, threads_per_worker: int, kwargs: dict[str, Any]) -> Any:
    arguments = cuda_cluster_kwargs(devices)       # refuses first when dask-cuda or the GPUs are missing
    from dask_cuda import LocalCUDACluster  # type: ignore[import-not-found]

    return LocalCUDACluster(threads_per_worker=threads_per_worker, **arguments, **kwargs)


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


# ---------------------------------------------------------------------------------------------
# attaching to a cluster started elsewhere
# ---------------------------------------------------------------------------------------------
def scheduler_of(values: Mapping[str, Any]) -> tuple[str, str]:
    """The ``(scheduler_file, scheduler_address)`` of a job's values (empty strings when absent)."""
    return (str(values.get("scheduler_file", "") or "").strip(),
            str(values.get("scheduler_address", "") or "").strip())


def attach_client(scheduler_file: str | os.PathLike | None = None, scheduler_address: str | None = None, *,
                  timeout: float | None = None) -> distributed.Client:
    """A new client of a dask scheduler that runs elsewhere (started by hand, by SLURM, ...).

    Exactly one of ``scheduler_file`` and ``scheduler_address`` is given. The client is not
    registered as owned (:func:`close_if_owned` leaves it alone) and is not made the default
    client; close it with ``client.close()``, which leaves the scheduler and its workers running.

    Parameters
    ----------
    scheduler_file
        The JSON file ``dask scheduler --scheduler-file F`` or dask-jobqueue's ``SLURMRunner``
        writes (on a file system this machine shares with the scheduler).
    scheduler_address
        ``tcp://host:port`` (or ``tls://``, ``ucx://``...; a bare ``host:port`` means tcp), e.g.
        ``SLURMCluster(...).scheduler_address``.
    timeout
        Seconds to wait for the scheduler to answer, and then for at least one worker (default
        :data:`ATTACH_TIMEOUT`).

    Returns
    -------
    distributed.Client

    Raises
    ------
    InputError
        Both or neither given, the file missing or unreadable, the scheduler not answering, or no
        worker joining within ``timeout`` (one line naming the file / address).
    """
    timeout = float(ATTACH_TIMEOUT if timeout is None else timeout)
    file = str(scheduler_file or "").strip()
    address = str(scheduler_address or "").strip()
    if file and address:
        raise InputError(None, what="give --scheduler_file or --scheduler_address, not both",
                         field="--scheduler_address")
    if not file and not address:
        raise InputError(None, what="attaching to a dask cluster needs --scheduler_file or --scheduler_address",
                         field="--scheduler_file")
    if file:
        path = Path(os.path.expandvars(file))
        if not path.is_file():
            raise InputError(file, what="dask scheduler file not found (start the scheduler with "
                             "--scheduler-file first)", field="--scheduler_file")
        try:
            import json

            info = json.loads(path.read_text())
            target = str(info["address"])
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(file, what="not a dask scheduler file (a JSON object with an 'address')",
                             field="--scheduler_file") from None
        where, field = file, "--scheduler_file"
    else:
        if "://" not in address:
            address = "tcp://" + address
        if not address.startswith(_SCHEMES) or not address.split("://", 1)[1]:
            raise InputError(None, what=f"{scheduler_address!r} is not a dask scheduler address "
                             "(tcp://host:port)", field="--scheduler_address")
        target, where, field = address, None, "--scheduler_address"
    try:
        client = distributed.Client(target, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise InputError(where, what=f"no dask scheduler answers at {target} within {timeout:g} s ({exc})",
                         field=field) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError):
        client.close()
        raise InputError(where, what=f"the dask scheduler at {target} has no worker after {timeout:g} s",
                         field=field) from None
    return client


def _worker_device() -> dict[str, Any]:
    """What a worker runs on (executed on each worker): its CUDA devices and whether it is dask-cuda's."""
    from subtomo_nb.backend.gpus import cuda_visible_devices

    visible = cuda_visible_devices() or []
    return {"cuda_visible_devices": ",".join(visible), "dask_cuda": "dask_cuda" in sys.modules,
            "gpu": bool(visible)}


def _scheduler_steals(dask_scheduler: Any = None) -> bool:
    """Whether the scheduler runs work stealing (executed on the scheduler)."""
    return "stealing" in dask_scheduler.extensions


def work_stealing(client: distributed.Client) -> bool | None:
    """Whether the scheduler behind ``client`` steals tasks (None when it cannot be asked)."""
    try:
        return bool(client.run_on_scheduler(_scheduler_steals))
    except Exception:  # noqa: BLE001 - a scheduler that refuses run_on_scheduler, or is gone
        return None


#: The note :func:`job_client` gives for a user's cluster that steals tasks.
STEALING_NOTE = ("note: this dask cluster steals tasks: a stolen E-step batch loads its particles again on the "
                 "thief (memory beyond the plan); start its scheduler with "
                 "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING=False to keep each batch on one worker")


def worker_count(client: distributed.Client) -> int:
    """The number of workers of the cluster behind ``client`` (0 when it cannot be asked)."""
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - a closed client or a scheduler gone: none known
        return 0


def describe_cluster(client: distributed.Client, backend: str = "numpy") -> str:
    """One ``run.out`` line: the scheduler a job runs on, its workers, and the device they use.

    A worker with CUDA devices (``CUDA_VISIBLE_DEVICES``, as ``LocalCUDACluster`` and
    ``dask_cuda.CUDAWorker`` set it per worker) counts as a GPU worker. ``backend`` is the job's
    backend name: the workers run its arrays (numpy on the CPU, cupy on their GPU, strict on
    array-api-strict's test device).
    """
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
    try:
        devices = client.run(_worker_device, on_error="return")
    except Exception:  # noqa: BLE001 - a worker leaving while asked: describe what is known
        devices = {}
    n_gpu = sum(1 for d in devices.values() if isinstance(d, dict) and d.get("gpu"))
    head = (f"dask scheduler {info.get('address', client.scheduler.address)}: {len(workers)} worker"
            f"{'s' if len(workers) != 1 else ''}, {threads} thread{'s' if threads != 1 else ''}")
    gpus = f"{n_gpu} GPU worker{'s' if n_gpu != 1 else ''} (CUDA devices)"
    if backend == "cupy":
        return f"{head}; {gpus} run cupy" if n_gpu else f"{head}; workers run cupy on their current CUDA device"
    if backend == "strict":
        return f"{head}; workers run the strict test backend (array-api-strict, device1)"
    if n_gpu:
        return f"{head}; {gpus}, but the job's backend is numpy: all workers run on the CPU (numpy)"
    return f"{head}; workers run on the CPU (numpy)"


@contextlib.contextmanager
def job_client(values: Mapping[str, Any], client: distributed.Client | None = None,
               report: Callable[[str], None] | None = None,
               backend: str = "numpy") -> Iterator[distributed.Client | None]:
    """The dask client of one job: attached to the job's scheduler, or the one given, or None.

    With ``scheduler_file`` / ``scheduler_address`` in ``values`` a client of that scheduler is
    opened for the job and closed afterwards (the cluster keeps running); it replaces ``client``.
    Whatever client the job runs on is named through ``report`` (:func:`describe_cluster`).

    Parameters
    ----------
    values
        The job's values (``scheduler_file``, ``scheduler_address``; other keys ignored).
    client
        The client the job was handed (a notebook's, a ``--j N`` local cluster's), or None.
    report
        Called with the one-line description (e.g. the job's progress log).
    backend
        The job's backend name (what its workers run, in the description).

    Yields
    ------
    distributed.Client or None
        None: the job runs in this process (serial).
    """
    file, address = scheduler_of(values)
    own = attach_client(file or None, address or None) if (file or address) else None
    active = own if own is not None else client
    try:
        if active is not None and report is not None:
            report(describe_cluster(active, backend))
            threads = int(values.get("nr_threads", 1) or 1)
            if own is not None and threads > 1:
                report(f"--j {threads} not used: the attached cluster's workers do the work")
            if not is_owned(active) and work_stealing(active):
                report(STEALING_NOTE)
        yield active
    finally:
        if own is not None:
            own.close()
