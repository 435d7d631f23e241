"""Fixtures of the execution-layer tests: one 2-worker LocalCluster (processes) and the tiny project.

The cluster client is *not* made the default client (``set_as_default=False``), so tests can
check :func:`subtomo_nb.parallel.get_client` with and without a current client.
"""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.io.mrc import read_map
from subtomo_nb.refine.noise import initial_sigma2
from subtomo_nb.refine.sampling import Sampling
from subtomo_nb.tasks.particle_data import load_particle_set

#: Particles used (of the 92): two half-sets of 24 (even / odd rows), 6 batches of 4 each.
N_USED = 48
BATCH = 4
PIX = 10.8


@pytest.fixture(scope="session")
def cluster_client():
    """A 2-worker, 1-thread-per-worker LocalCluster with processes (not the default client)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=40)
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def estep_setup(tiny_project, tiny_extract_3d) -> dict:
    """Inputs of one E-step iteration on the tiny project (small sampling, perturbed origins)."""
    pset, _ = load_particle_set(tiny_extract_3d)
    ref, pix = read_map(tiny_project["map"])
    assert ref.shape == (32, 32, 32) and abs(pix - PIX) < 1e-3
    rows = np.arange(N_USED)
    halves = [rows[0::2], rows[1::2]]
    dtype = np.float32
    rng = np.random.default_rng(1)
    n = len(pset)
    return dict(
        star=tiny_extract_3d, pset=pset, halves=halves, dtype=dtype,
        # each half its own reference (the second moved by one voxel), as after a first iteration
        references=[np.asarray(ref, dtype=np.float64), np.roll(np.asarray(ref, dtype=np.float64), 1, axis=2)],
        sigma2=[initial_sigma2(pset, h, 32, None, dtype) for h in halves],
        kwargs=dict(sampling=Sampling(healpix_order=1, offset_range_A=PIX, offset_step_A=PIX, sym="C6"),
                    prior_angles=np.zeros((n, 3)), origins_px=rng.normal(scale=0.7, size=(n, 3)),
                    pixel_size_A=PIX, coarse_radius=6.0, fine_radius=8.0, sigma_offset_A=10.0, pad=2, r_max=8.0,
                    firstiter_cc=False, dtype=dtype, ctf=True),
    )


@pytest.fixture(scope="session")
def batches(cluster_client, estep_setup):
    """The two half-sets loaded on the cluster in batches of 4 (kept for the whole session)."""
    from subtomo_nb.parallel import ParticleBatches

    pb = ParticleBatches(cluster_client, estep_setup["star"], estep_setup["halves"], batch_size=BATCH,
                         dtype=estep_setup["dtype"], name="test")
    pb.wait()
    yield pb
    pb.release()


@pytest.fixture(scope="session")
def undisturbed(cluster_client, batches, estep_setup) -> list:
    """Both half-sets' E-step on the cluster, nothing disturbed: [(BackProjector, [BatchResult])] * 2."""
    from subtomo_nb.parallel import run_halves_estep

    s = estep_setup
    return run_halves_estep(cluster_client, batches, s["references"], sigma2=s["sigma2"], **s["kwargs"])
