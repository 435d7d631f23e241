"""Execution layer: the dask client and the per-half-set E-step graphs (design.md, "Execution with dask").

The numerical core (``fourier``, ``refine``, ...) never imports this package; it drives them.

* :func:`get_client` / :func:`close_if_owned` -- the user's client, or a local (CUDA) cluster.
* :func:`attach_client` / :func:`job_client` / :func:`describe_cluster` -- a job on a cluster started
  elsewhere (``--scheduler_file``, ``--scheduler_address``; SLURM through dask-jobqueue).
* :class:`ParticleBatches` -- particles loaded once per job by tasks, kept on the workers.
* :func:`run_half_estep` / :func:`run_halves_estep` -- one iteration's E-step of one / both
  half-sets, reproducible to the bit whatever the scheduling (and after a worker's death).
* :class:`DaskExecutor` -- the drivers' E-step executor
  (:class:`~subtomo_nb.refine.executor.EStepExecutor`) on a client; the job layer passes it in.
"""

from subtomo_nb.parallel.client import (
    attach_client,
    close_if_owned,
    cuda_cluster_available,
    describe_cluster,
    get_client,
    gpu_count,
    job_client,
)
from subtomo_nb.parallel.estep import (
    HalfEStep,
    ParticleBatches,
    run_half_estep,
    run_halves_estep,
    submit_half_estep,
    tree_sum_order,
)
from subtomo_nb.parallel.executor import DaskExecutor

__all__ = [
    "get_client",
    "close_if_owned",
    "cuda_cluster_available",
    "gpu_count",
    "attach_client",
    "job_client",
    "describe_cluster",
    "ParticleBatches",
    "HalfEStep",
    "submit_half_estep",
    "run_half_estep",
    "run_halves_estep",
    "tree_sum_order",
    "DaskExecutor",
]
