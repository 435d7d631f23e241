"""The dask E-step on a ``LocalCUDACluster`` with backend "cupy", against numpy (GPU machines only).

``get_client(gpu=[0])`` starts one dask-cuda worker on GPU 0; two iterations of both half-sets
run there with ``backend="numpy"`` and then ``backend="cupy"`` through the execution-layer test's
own driver (:func:`tests.parallel.test_estep_backend._run`, whose in-process strict version checks
the same rules on the CPU), and:

* the same poses as numpy, scores and half-set sums within 1e-4 (relative to the largest value);
* the cluster runs without work stealing: get_client turns it off (the test sets no config);
* the worker's uploads: every batch's particles once, in iteration 1, never again; each half-set's
  reference at most once per iteration.

Skipped without cupy, a CUDA device or dask-cuda; failed instead with ``SUBTOMO_REQUIRE_GPU=1``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.gpu._require import require_cupy_device, require_module

cupy = require_cupy_device()
require_module("dask_cuda")
require_module("distributed")
require_module("array_api_strict")      # tests.parallel.test_estep_backend skips without it

import tests.parallel.test_estep_backend as strict_version  # noqa: E402
from subtomo_nb.parallel import close_if_owned, get_client  # noqa: E402
from subtomo_nb.parallel.client import is_owned, work_stealing  # noqa: E402

pytestmark = pytest.mark.gpu
ITERATIONS = 2
RTOL = 1e-4


@pytest.fixture(scope="module")
def cuda_client():
    # no config wrapper: get_client itself must start the LocalCUDACluster without work stealing
    client = get_client(gpu=[0], dashboard_address=":0", silence_logs=40)
    assert is_owned(client), "a dask client was already current: the test needs its own LocalCUDACluster"
    try:
        yield client
    finally:
        close_if_owned(client)


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30)) if ref.size else 0.0


def test_cuda_cluster_estep_equals_numpy_and_uploads_once(cuda_client, estep_setup):
    workers = cuda_client.scheduler_info()["workers"]
    assert len(workers) == 1                                           # one worker per GPU named
    assert work_stealing(cuda_client) is False                         # get_client turned it off
    ref_out, _ = strict_version._run(cuda_client, estep_setup, "numpy", iterations=ITERATIONS)
    got_out, counts = strict_version._run(cuda_client, estep_setup, "cupy", iterations=ITERATIONS)
    assert len(got_out) == len(counts) == ITERATIONS
    n_batches = 2 * (strict_version.N_HALF // strict_version.BATCH)

    for ref_it, got_it in zip(ref_out, got_out, strict=True):
        for (bp_ref, res_ref), (bp_got, res_got) in zip(ref_it, got_it, strict=True):
            for got, ref in ((bp_got.data, bp_ref.data), (bp_got.weight, bp_ref.weight)):
                assert isinstance(got, np.ndarray)                    # the half-set sums come back to the host
                assert _rel(got, ref) <= RTOL
            for a, b in zip(res_got, res_ref, strict=True):
                assert all(isinstance(getattr(a, f.name), np.ndarray) for f in dataclasses.fields(a))
                for name in ("rot", "tilt", "psi", "shift_px"):       # the same poses
                    np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-3, err_msg=name)
                for name in ("pmax", "log_likelihood", "sigma2_num", "sigma2_den"):
                    assert _rel(getattr(a, name), getattr(b, name)) <= RTOL, name

    per_worker = [c[0] for c in counts]            # {worker: {kind: host->device copies}} after each iteration
    first = sum(w.get("particles", 0) for w in per_worker[0].values())
    assert first == n_batches                                          # each batch uploaded once, in iteration 1
    for later in per_worker[1:]:
        assert sum(w.get("particles", 0) for w in later.values()) == first   # and never again
    for it, snap in enumerate(per_worker, start=1):
        refs = [w.get("reference", 0) for w in snap.values()]
        assert all(r <= 2 * it for r in refs) and sum(refs) >= 2 * it  # <= one per half-set and iteration
