"""Fixtures of the SLURM tests: a one-node SLURM cluster on localhost, the runs they are compared with.

The cluster (munged, slurmctld, slurmd; :mod:`tests.slurm._cluster`) is configured and started
once per module in a temporary directory and stopped afterwards. Without root or without Debian's
``slurm-wlm`` and ``munge`` (``.ci/run`` installs them as root), or without dask-jobqueue, the
tests skip with that reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._refine_job import refine_values, run_refine_job
from tests.slurm._cluster import LocalSlurm, unavailable


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node SLURM cluster; ``SLURM_CONF`` points the client commands (sbatch...) at it."""
    why = unavailable()
    if why:
        pytest.skip(why)
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (pip install dask-jobqueue)")
    cluster = LocalSlurm.start(tmp_path_factory.mktemp("slurm"))
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", str(cluster.conf))
    try:
        yield cluster
    finally:
        mp.undo()
        cluster.stop()


@pytest.fixture(scope="module")
def local_cluster_run(slurm, tiny_project, tiny_extract_3d, tmp_path_factory) -> Path:
    """The auto-refine job on a 2-worker LocalCluster: the dask run the SLURM runs must equal to the bit."""
    distributed = pytest.importorskip("distributed")
    root = Path(tmp_path_factory.mktemp("refine_local_cluster"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            distributed.Client(c, set_as_default=False) as client:
        return run_refine_job(root, refine_values(tiny_extract_3d, tiny_project["map"]), client=client)


@pytest.fixture(scope="module")
def serial_run(slurm, tiny_project, tiny_extract_3d, tmp_path_factory) -> Path:
    """The auto-refine job without dask (``--j 1``)."""
    root = Path(tmp_path_factory.mktemp("refine_serial"))
    return run_refine_job(root, refine_values(tiny_extract_3d, tiny_project["map"]))
