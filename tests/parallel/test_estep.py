"""The distributed E-step against the serial loop it replaces, and against a worker's death."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.parallel import ParticleBatches, run_half_estep, submit_half_estep, tree_sum_order
from subtomo_nb.parallel.estep import _cached_streams, crop_half, crop_radius, uncrop_half
from subtomo_nb.refine.estep import ReferenceTerms
from subtomo_nb.refine.expectation import FineReferenceCache
from subtomo_nb.refine.expectation import EStepSettings, IterationCache, ParticleBatch, RotationSums, expectation_batch
from subtomo_nb.tasks.particle_data import particle_transforms

distributed = pytest.importorskip("distributed")

#: BatchResult fields that are discrete (must agree exactly) and continuous (float rounding).
DISCRETE = ("rot", "tilt", "psi", "shift_px", "n_significant")
CONTINUOUS = ("pmax", "log_likelihood", "sigma2_num", "sigma2_den")


def _serial_half(s: dict, half: int, batch_rows: list[np.ndarray]):
    """What AutoRefine._expectation does: one projector, a running back-projector sum, batch by batch."""
    k = s["kwargs"]
    dt = s["dtype"]
    proj = Projector(s["references"][half].astype(dt), pad=k["pad"])
    bp = BackProjector(32, pad=k["pad"], r_max=k["r_max"], dtype=dt)
    cache = IterationCache()
    settings = EStepSettings(pixel_size_A=k["pixel_size_A"], coarse_radius=k["coarse_radius"],
                             fine_radius=k["fine_radius"], sigma_offset_A=k["sigma_offset_A"],
                             firstiter_cc=k["firstiter_cc"])
    results = []
    for idx in batch_rows:
        data, ctf2, mult = particle_transforms(s["pset"], idx, dtype=dt, origins=k["origins_px"][idx])
        results.append(expectation_batch(proj, ParticleBatch.of(data, ctf2, mult), s["sigma2"][half], k["sampling"],
                                         k["prior_angles"][idx], settings, backprojector=bp, cache=cache))
    cache.flush()
    return bp, results


def _assert_bitwise(a, b) -> None:
    (bp_a, res_a), (bp_b, res_b) = a, b
    np.testing.assert_array_equal(bp_a.data, bp_b.data)
    np.testing.assert_array_equal(bp_a.weight, bp_b.weight)
    assert len(res_a) == len(res_b)
    for ra, rb in zip(res_a, res_b):
        for f in DISCRETE + CONTINUOUS:
            np.testing.assert_array_equal(getattr(ra, f), getattr(rb, f), err_msg=f)


def test_tree_order_is_fixed():
    assert tree_sum_order(1) == []
    assert tree_sum_order(2) == [[(0, 1)]]
    assert tree_sum_order(5) == [[(0, 1), (2, 3)], [(0, 1)], [(0, 1)]]
    assert tree_sum_order(6) == [[(0, 1), (2, 3), (4, 5)], [(0, 1)], [(0, 1)]]


def test_reference_values_are_shared_by_a_workers_tasks_but_sums_are_not():
    """A global search's reference values (coarse and fine) and phase tables are computed once per
    worker and iteration; deferred orientation sums stay per task."""
    shared = IterationCache()
    shared.coarse_references[("c",)] = ReferenceTerms.of(np.ones((3, 4), dtype=np.complex64))
    task = shared.for_task()
    assert task.coarse_references[("c",)] is shared.coarse_references[("c",)] and not task.rotation_sums
    task.fine_references[("f",)] = FineReferenceCache(2, 3, np.float32)
    task.fine_phases[("p",)] = np.ones((2, 3), np.complex64)
    task.rotation_sums[("s",)] = RotationSums.__new__(RotationSums)
    task.share_into(shared)
    assert shared.fine_references[("f",)] is task.fine_references[("f",)] and ("p",) in shared.fine_phases
    assert not shared.rotation_sums


def test_crop_keeps_every_inserted_voxel():
    rng = np.random.default_rng(0)
    for r_max, pad in ((8.0, 2), (5.0, 2), (16.0, 2), (7.0, 1.5)):
        bp = BackProjector(32, pad=pad, r_max=r_max)
        pts = rng.uniform(-r_max, r_max, size=(400, 3))
        pts = pts[np.linalg.norm(pts, axis=1) <= r_max]
        A = np.linalg.qr(rng.normal(size=(5, 3, 3)))[0]
        vals = rng.normal(size=(5, len(pts))) + 1j * rng.normal(size=(5, len(pts)))
        bp.insert(A, vals, np.abs(vals), pts)
        r = crop_radius(bp.padded, bp.r_max, bp.pad)
        for arr in (bp.data, bp.weight):
            block = crop_half(arr, r)
            assert block.size <= arr.size
            np.testing.assert_array_equal(uncrop_half(block, bp.padded), arr)


def test_matches_serial_estep(cluster_client, batches, undisturbed, estep_setup):
    """(a) Each half on 2 workers == the serial loop over the same batches (to float32 rounding).

    Tolerances: the sums are float32 (as AutoRefine's) and are added in another order. The serial
    loop sums every batch's particle-frame contributions per orientation in float32 and scatters
    them once (``IterationCache.flush``); each cluster task scatters its own batch into a partial
    back-projector and the partials are added by a binary tree. Both are float32 sums of
    O(10-100) terms per voxel, so they differ by up to ~n * eps32 ~ 1e-5 of the largest value
    (measured: 2e-6 on data, 8e-6 on weight). Besides, the workers' BLAS is single-threaded and
    this process's may not be, which moves the float32 GEMMs (dot products of ~1e3 terms) by
    ~1e-6 relative. Hence ``atol = 5e-5 * max|.|`` on data and weight, ``rtol = 2e-4`` on the
    per-particle likelihood statistics (differences of GEMM results; measured <= 3e-5), and
    exact equality of the discrete results (best orientation, translation, number of
    significant samples).
    """
    s = estep_setup
    for half in (0, 1):
        bp_par, res_par = undisturbed[half]
        assert np.array_equal(batches.rows(half), s["halves"][half])
        t0 = time.perf_counter()
        bp_ser, res_ser = _serial_half(s, half, batches.batches[half])
        t_ser = time.perf_counter() - t0
        assert bp_par.data.shape == bp_ser.data.shape and bp_par.data.dtype == bp_ser.data.dtype
        assert bp_ser.weight.max() > 0 and bp_par.weight.max() > 0
        for name in ("data", "weight"):
            a, b = getattr(bp_par, name), getattr(bp_ser, name)
            scale = np.abs(b).max()
            err = np.abs(a - b).max()
            assert err <= 5e-5 * scale, (half, name, err / scale)
            print(f"half {half + 1} {name}: max |parallel - serial| / max = {err / scale:.2e}")
        assert len(res_par) == len(res_ser) == len(batches.batches[half])
        for rp, rs in zip(res_par, res_ser):
            for f in DISCRETE:
                np.testing.assert_array_equal(getattr(rp, f), getattr(rs, f), err_msg=f)
            for f in CONTINUOUS:
                a, b = getattr(rp, f), getattr(rs, f)
                np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * np.abs(b).max(), err_msg=f)
        print(f"half {half + 1}: serial E-step in the test process {t_ser:.2f} s")
    # the halves used their own references: their sums differ
    assert not np.allclose(undisturbed[0][0].data, undisturbed[1][0].data)


def test_single_half_and_rerun_are_bitwise_identical(cluster_client, batches, undisturbed, estep_setup):
    """run_half_estep alone == the same half from run_halves_estep, to the bit; and times it."""
    s = estep_setup
    calls: list = []
    t0 = time.perf_counter()
    again = run_half_estep(cluster_client, batches, 0, s["references"][0], sigma2=s["sigma2"][0],
                           progress=lambda done, total: calls.append((done, total)), **s["kwargs"])
    print(f"\nhalf 1 E-step on 2 workers: {time.perf_counter() - t0:.2f} s")
    _assert_bitwise(again, undisturbed[0])
    n = len(batches.batches[0])
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_worker_death_mid_iteration(cluster_client, batches, undisturbed, estep_setup):
    """(b) Kill a worker while the E-steps run: dask recomputes what it held; results identical."""
    s = estep_setup
    jobs = [submit_half_estep(cluster_client, batches, h, s["references"][h], sigma2=s["sigma2"][h], **s["kwargs"])
            for h in (0, 1)]
    futs = [f for j in jobs for f in j.futures]
    deadline = time.monotonic() + 60
    while sum(f.done() for f in futs) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    n_done = sum(f.done() for f in futs)
    # kill a worker that is computing something now (else any): os._exit, no clean shutdown
    processing = cluster_client.processing()
    victim = max(processing, key=lambda w: len(processing[w]))
    n_running = len(processing[victim])
    held = [k for k, ws in cluster_client.who_has().items() if victim in ws]
    cluster_client.run(os._exit, 1, workers=[victim], on_error="ignore")   # the reply never comes
    disturbed = [j.result() for j in jobs]
    for j in jobs:
        j.release()
    assert 2 <= n_done < len(futs), "the kill did not happen mid-iteration"
    assert n_running > 0 or held, "the killed worker had neither tasks nor data"
    print(f"\nkilled {victim} after {n_done}/{len(futs)} batches ({n_running} tasks assigned, "
          f"{len(held)} keys held); workers now {sorted(cluster_client.scheduler_info()['workers'])}")
    for h in (0, 1):
        _assert_bitwise(disturbed[h], undisturbed[h])


def test_in_memory_particle_set_and_release(cluster_client, estep_setup):
    """A ParticleSet object works as the source (as AutoRefine holds one); release() frees the workers' caches."""
    s = estep_setup
    rows = s["halves"][0][:3]
    pb = ParticleBatches(cluster_client, s["pset"], [rows], batch_size=2, dtype=s["dtype"], name="mem")
    assert [len(b) for b in pb.batches[0]] == [2, 1]
    bp, res = run_half_estep(cluster_client, pb, 0, s["references"][0], sigma2=s["sigma2"][0], **s["kwargs"])
    assert [len(r.rot) for r in res] == [2, 1] and bp.weight.max() > 0
    held = cluster_client.run(_cached_streams)
    assert any(k.startswith(pb.token) for ks in held.values() for k in ks)
    pb.release()
    held = cluster_client.run(_cached_streams)
    assert not any(k.startswith(pb.token) for ks in held.values() for k in ks)


def test_streams_with_equal_references_share_projector_and_cache() -> None:
    """VDAM's two pseudo half-sets score the same map: a worker builds one projector and one cache
    of reference values for both; a different map (or the next iteration's) gets its own."""
    from subtomo_nb.parallel.estep import _PROJECTORS, _forget_streams, _worker_projector

    rng = np.random.default_rng(3)
    vol = rng.standard_normal((16, 16, 16))
    other = vol.copy()
    other[0, 0, 0] += 1e-3
    try:
        p1, c1 = _worker_projector("tst-share-h0", "ref-a", vol, 2, np.float32)
        p2, c2 = _worker_projector("tst-share-h1", "ref-b", vol.copy(), 2, np.float32)
        assert p2 is p1 and c2 is c1
        p3, c3 = _worker_projector("tst-share-h1", "ref-c", other, 2, np.float32)   # next map of half 2
        assert p3 is not p1 and c3 is not c1
        p4, _ = _worker_projector("tst-share-h2", "ref-d", vol, 1, np.float32)      # other padding
        assert p4 is not p1
        np.testing.assert_array_equal(p3.sample(np.eye(3)[None], np.ones((1, 3))),
                                      Projector(other.astype(np.float32), pad=2).sample(np.eye(3)[None], np.ones((1, 3))))
    finally:
        _forget_streams("tst-share-")
    assert not any(k[1].startswith("tst-share-") for k in _PROJECTORS)


class _Cast32Backend:
    """A device that stores float32 whatever the host dtype (as a GPU backend may): the kept bytes
    must be counted on the device copies, which is what releasing them subtracts."""

    name = "cast32"

    def to_device(self, a: np.ndarray, kind: str = "data") -> np.ndarray:
        return np.asarray(a, dtype=np.float32)


def test_device_batch_bytes_are_counted_on_the_device_copies_and_return_to_zero() -> None:
    from subtomo_nb.parallel.estep import _DEVICE_BATCHES, _device_batch, _forget_streams, _worker_device_bytes

    be = _Cast32Backend()
    host = (np.zeros((3, 4, 5), np.float64), np.zeros((3, 4, 5), np.float64), np.ones(3, np.float64))
    assert _worker_device_bytes() == 0
    try:
        held = _device_batch("load-0-tst-bytes", host, be, budget=None)
        assert all(a.dtype == np.float32 for a in held)
        # the device copies' bytes (float32), not the float64 host arrays' (twice as many)
        assert _worker_device_bytes() == (2 * 60 + 3) * 4
        assert _device_batch("load-0-tst-bytes", host, be, budget=None) is held      # kept: no new upload
        # beyond the budget: used once, not kept, nothing counted
        _device_batch("load-1-tst-bytes", host, be, budget=(2 * 60 + 3) * 4)
        assert _worker_device_bytes() == (2 * 60 + 3) * 4
    finally:
        _forget_streams("tst-bytes-")
    assert _worker_device_bytes() == 0
    assert not any(k[1].endswith("-tst-bytes") for k in _DEVICE_BATCHES)
