"""The dask E-step on the strict test backend: same numbers as numpy, and the transfers per worker.

Two in-process workers (``LocalCluster(processes=False)``: the process's strict backend and its
transfer counter are shared, the workers' device caches are kept per worker) run three
iterations of both half-sets with ``backend="strict"``:

* every batch's particles are uploaded once, by the worker that ran it, in iteration 1 and never
  again;
* each worker receives each half-set's reference at most once per iteration;
* only per-particle results, half-set sums (and the E-step's small metadata) come back;
* the same poses as the numpy run, and its scores and sums to float32 rounding (1e-4 / 1e-5);
* with a device budget (``device_bytes``) that holds one batch per worker, each worker keeps one
  batch and uploads its other one again every iteration, with the same numbers as without.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402
pytest.importorskip("array_api_strict")

from subtomo_nb.backend import get_backend  # noqa: E402
from subtomo_nb.parallel import ParticleBatches, run_halves_estep  # noqa: E402
from subtomo_nb.parallel.estep import _worker_device_bytes, _worker_uploads  # noqa: E402

ITERATIONS = 3
N_HALF = 8          # particles per half-set
BATCH = 4


@pytest.fixture(scope="module")
def threaded_client():
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                           dashboard_address=":0", silence_logs=40)
        client = distributed.Client(cluster, set_as_default=False)
        yield client
        client.close()
        cluster.close()


def _run(client, setup, backend: str, device_bytes: int | None = None, iterations: int = ITERATIONS,
         kept: list | None = None):
    halves = [h[:N_HALF] for h in setup["halves"]]
    pb = ParticleBatches(client, setup["pset"], halves, batch_size=BATCH, dtype=setup["dtype"], name=f"be-{backend}")
    pb.wait()
    be = get_backend(backend)
    out, counts = [], []
    try:
        for it in range(iterations):
            # a new reference per iteration (as the M-step makes), the two halves different
            refs = [np.roll(r, it, axis=0) for r in setup["references"]]
            out.append(run_halves_estep(client, pb, refs, sigma2=setup["sigma2"], backend=backend,
                                        device_bytes=device_bytes, **setup["kwargs"]))
            counts.append((client.run(_worker_uploads), be.transfers.snapshot()))
            if kept is not None:
                kept.append(client.run(_worker_device_bytes))
    finally:
        pb.release()
    return out, counts


def test_strict_dask_estep_equals_numpy_and_moves_each_array_once(threaded_client, estep_setup):
    be = get_backend("strict")
    be.transfers.reset()
    ref_out, _ = _run(threaded_client, estep_setup, "numpy")
    got_out, counts = _run(threaded_client, estep_setup, "strict")
    n_batches = 2 * (N_HALF // BATCH)

    # the same numbers as numpy
    for ref_it, got_it in zip(ref_out, got_out):
        for (bp_ref, res_ref), (bp_got, res_got) in zip(ref_it, got_it):
            # float32 sums: strict runs the array expressions (as a GPU does), numpy its numba kernels,
            # which round some voxels differently: compared to the largest value (1e-5)
            for got, ref in ((bp_got.data, bp_ref.data), (bp_got.weight, bp_ref.weight)):
                assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
            for a, b in zip(res_got, res_ref):
                assert all(isinstance(getattr(a, f.name), np.ndarray) for f in dataclasses.fields(a))  # host arrays
                for name in ("rot", "tilt", "psi", "shift_px", "n_significant"):      # the same poses
                    np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
                # float32 scores (the data shifted bit-identically; the E-step's float32 sums round
                # differently on the two paths: pmax moved by up to 5e-5 relative here)
                np.testing.assert_allclose(a.pmax, b.pmax, rtol=1e-4)
                np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(a.sigma2_num, b.sigma2_num, rtol=1e-5)
                np.testing.assert_allclose(a.sigma2_den, b.sigma2_den, rtol=1e-6)

    per_worker = [c[0] for c in counts]
    # particles: uploaded in iteration 1, one copy per batch (each batch ran on one worker), never again
    first = sum(w.get("particles", 0) for w in per_worker[0].values())
    assert first == n_batches
    for later in per_worker[1:]:
        assert sum(w.get("particles", 0) for w in later.values()) == first
    # references: at most one per worker, half-set and iteration; at least one per half-set and iteration
    for it, snap in enumerate(per_worker, start=1):
        refs = [w.get("reference", 0) for w in snap.values()]
        assert all(r <= 2 * it for r in refs) and sum(refs) >= 2 * it
    # what crossed, by kind: no particles after iteration 1; no particle data or map comes back
    totals = [c[1] for c in counts]
    assert totals[0]["h2d"]["particles"][0] == 3 * n_batches          # data, CTF², multiplicity
    assert totals[-1]["h2d"]["particles"] == totals[0]["h2d"]["particles"]
    assert totals[-1]["h2d"]["reference"][0] == sum(w.get("reference", 0) for w in per_worker[-1].values())
    # (the E-step reads small index tables of its significant samples back as "metadata")
    assert {"results", "sums"} <= set(totals[-1]["d2h"]) <= {"results", "sums", "metadata"}


def _batch_bytes(setup) -> int:
    """Bytes of one batch's data, CTF² and multiplicity (complex64 + 2 float32 per voxel)."""
    n = int(setup["references"][0].shape[0])
    return BATCH * n * n * (n // 2 + 1) * (8 + 4 + 4)


def test_strict_dask_budget_keeps_what_fits_and_uploads_the_rest_every_iteration(threaded_client, estep_setup):
    """A budget of one batch per worker: each worker keeps one of its two batches and uploads the
    other again in every iteration; the results equal those of an unlimited budget (the same data)."""
    be = get_backend("strict")
    per_batch = _batch_bytes(estep_setup)
    iterations = 2
    uploads = lambda: sum(w.get("particles", 0) for w in threaded_client.run(_worker_uploads).values())  # noqa: E731
    be.transfers.reset()
    start = uploads()                       # the workers' counts run on over the module's tests
    full_out, full_counts = _run(threaded_client, estep_setup, "strict", iterations=iterations)
    be.transfers.reset()
    before = {w: c.get("particles", 0) for w, c in threaded_client.run(_worker_uploads).items()}
    kept: list = []
    part_out, part_counts = _run(threaded_client, estep_setup, "strict", device_bytes=per_batch + per_batch // 2,
                                 iterations=iterations, kept=kept)
    n_batches = 2 * (N_HALF // BATCH)
    workers = sorted(part_counts[0][0])
    assert len(workers) == 2

    # unlimited: every batch uploaded once; limited: one batch per worker kept, the other uploaded per iteration
    full = [sum(w.get("particles", 0) for w in c[0].values()) - start for c in full_counts]
    assert full == [n_batches] * iterations
    for it, (per_worker, totals) in enumerate(part_counts, start=1):
        for w in workers:
            got = per_worker[w].get("particles", 0)
            # each worker scores its two placed batches: both uploaded in iteration 1, one again after
            assert got - before[w] == (2 if it == 1 else 1), (it, w)
            before[w] = got
        assert kept[it - 1] == {w: per_batch for w in workers}           # one batch kept per worker
        assert totals["h2d"]["particles"][0] == 3 * (n_batches + (it - 1) * n_batches // 2)
    # the same numbers, bit for bit
    for full_it, part_it in zip(full_out, part_out):
        for (bp_f, res_f), (bp_p, res_p) in zip(full_it, part_it):
            np.testing.assert_array_equal(bp_p.data, bp_f.data)
            np.testing.assert_array_equal(bp_p.weight, bp_f.weight)
            for a, b in zip(res_p, res_f):
                for f in dataclasses.fields(a):
                    np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)
    # released: the workers dropped the kept batches and their bytes
    assert threaded_client.run(_worker_device_bytes) == {w: 0 for w in workers}
