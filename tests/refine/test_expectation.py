"""Batch E-step: poses of noise-free particles, priors, and the M-step sums."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.filters import low_pass
from subtomo_nb.fourier.fft import shift_half
from subtomo_nb.fourier.fsc import fsc
from subtomo_nb.fourier.grid import shell_index
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import angular_distance, euler_to_matrix
from subtomo_nb.geometry.symmetry import point_group
from subtomo_nb.refine.expectation import EStepSettings, IterationCache, ParticleBatch, expectation_batch
from subtomo_nb.refine.sampling import Sampling, log_orientation_prior
from subtomo_nb.simulate.phantom import render_map

N, PIX = 32, 10.8


@pytest.fixture(scope="module")
def reference():
    vol = low_pass(render_map(N, PIX).astype(np.float64), 40.0, PIX).astype(np.float32)
    return vol, Projector(vol, pad=2)


def _sym_error(A_found, A_true, sym="C6"):
    return np.min([angular_distance(A_found, A_true @ S.T) for S in point_group(sym)], axis=0)


def _noise_power(F):
    sh = shell_index(N)
    pw = np.bincount(sh.ravel(), (np.abs(F[0]) ** 2).ravel(), minlength=N)[: N // 2 + 1]
    return pw / np.bincount(sh.ravel(), minlength=N)[: N // 2 + 1]


def test_grid_poses_found_within_the_fine_sampling(reference):
    vol, proj = reference
    s = Sampling(healpix_order=2, offset_range_A=3 * PIX, offset_step_A=2 * PIX, sym="C6")
    rot, tilt, psi, _ = s.coarse_grid()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(rot), 10, replace=False)
    A = euler_to_matrix(rot[pick], tilt[pick], psi[pick])
    grid_t = s.translations_px(PIX)
    shifts = grid_t[rng.choice(len(grid_t), 10)]
    data = shift_half(proj.rotate3d(A, N), -shifts).astype(np.complex64)
    ctf2 = np.ones(data.shape, np.float32)
    sigma2 = _noise_power(data) + 1e-12
    res = expectation_batch(proj, ParticleBatch.of(data, ctf2, None), sigma2, s, np.zeros((10, 3)),
                            EStepSettings(pixel_size_A=PIX, coarse_radius=8, fine_radius=12, sigma_offset_A=50.0),
                            cache=IterationCache())
    err = _sym_error(euler_to_matrix(res.rot, res.tilt, res.psi), A)
    assert err.max() <= s.fine_step, np.round(err, 2)
    assert np.abs(res.shift_px - shifts).max() <= 0.5 + 1e-9
    assert np.all(res.pmax > 0) and np.all(res.n_significant >= 1)


def test_local_prior_restricts_the_search():
    s = Sampling(healpix_order=3, sym="C1", sigma_rot=7.5, sigma_tilt=7.5, sigma_psi=7.5)
    rot, tilt, psi, _ = s.coarse_grid()
    prior = np.array([[30.0, 60.0, -40.0], [-100.0, 120.0, 170.0]])
    logp = log_orientation_prior(s, rot, tilt, psi, *prior.T)
    for p in range(2):
        ok = np.isfinite(logp[p])
        np.testing.assert_allclose(np.exp(logp[p][ok]).sum(), 1.0)
        d = angular_distance(euler_to_matrix(rot[ok], tilt[ok], psi[ok]), euler_to_matrix(*prior[p]))
        assert d.max() < 2 * 3 * 7.5 + 1e-6   # direction and psi each within 3 sigma
        assert ok.sum() < 0.05 * len(rot)



def _random_poses(rng: np.random.Generator, P: int) -> np.ndarray:
    """``(P, 3)`` rot, tilt, psi (degrees), uniform over orientations."""
    return np.stack([rng.uniform(-180, 180, P), np.degrees(np.arccos(rng.uniform(-1, 1, P))),
                     rng.uniform(-180, 180, P)], axis=1)


def _noisy_views(proj, ang: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference's 3D transforms at ``ang`` with complex Gaussian noise of 0.3 × their mean amplitude."""
    data = proj.rotate3d(euler_to_matrix(*ang.T), N).astype(np.complex64)
    data += (rng.normal(size=data.shape) + 1j * rng.normal(size=data.shape)).astype(np.complex64) * 0.3 * np.abs(data).mean()
    return data

def test_backprojected_sums_reconstruct_the_reference(reference):
    vol, proj = reference
    rng = np.random.default_rng(1)
    P = 60
    ang = _random_poses(rng, P)
    A = euler_to_matrix(*ang.T)
    data = proj.rotate3d(A, N).astype(np.complex64)
    ctf2 = np.ones(data.shape, np.float32)
    # local search around the true poses with a tight prior: the sums must rebuild the map
    s = Sampling(healpix_order=4, offset_range_A=1 * PIX, offset_step_A=1 * PIX, sym="C1",
                 sigma_rot=3.75, sigma_tilt=3.75, sigma_psi=3.75)
    bp = BackProjector(N, pad=2)
    expectation_batch(proj, ParticleBatch.of(data, ctf2, None), _noise_power(data) + 1e-12, s, ang,
                      EStepSettings(pixel_size_A=PIX, coarse_radius=10, fine_radius=12, sigma_offset_A=5.0),
                      backprojector=bp)
    rec = bp.reconstruct()
    f = np.asarray(fsc(rec, vol))
    assert f[1:9].min() > 0.9, np.round(f, 3)


def test_orientation_sums_back_project_like_direct_insertion(reference):
    vol, proj = reference
    rng = np.random.default_rng(2)
    P = 8
    ang = _random_poses(rng, P)
    data = _noisy_views(proj, ang, rng)
    ctf2 = np.ones(data.shape, np.float32)
    s = Sampling(healpix_order=1, offset_range_A=1 * PIX, offset_step_A=1 * PIX, sym="C6")
    sigma2 = _noise_power(data) * 20 + 1e-12  # broad posteriors: many shared orientations
    settings = EStepSettings(pixel_size_A=PIX, coarse_radius=6, fine_radius=8, sigma_offset_A=20.0)
    direct, grouped = BackProjector(N, pad=2, dtype=np.float32), BackProjector(N, pad=2, dtype=np.float32)
    batch = ParticleBatch.of(data, ctf2, None)
    r1 = expectation_batch(proj, batch, sigma2, s, ang, settings, backprojector=direct)
    cache = IterationCache()
    r2 = expectation_batch(proj, batch, sigma2, s, ang, settings, backprojector=grouped, cache=cache)
    assert cache.rotation_sums                                   # the sums were deferred ...
    cache.flush()                                                # ... and back-projected here
    assert np.mean(r1.n_significant) > 8
    np.testing.assert_allclose(grouped.weight, direct.weight, rtol=1e-4, atol=1e-5 * np.abs(direct.weight).max())
    np.testing.assert_allclose(grouped.data, direct.data, rtol=1e-4, atol=1e-5 * np.abs(direct.data).max())
    np.testing.assert_array_equal(r1.rot, r2.rot)


@pytest.mark.parametrize("backend", ["numpy", "strict"])
def test_orientation_sums_of_oversampling_2_hold_every_fine_id(reference, backend):
    """Oversampling 2 gives 64 children per coarse orientation: the deferred orientation sums
    hold ids up to ``n_coarse·64 − 1`` (not ``n_coarse·8``) and back-project like direct insertion."""
    from subtomo_nb.backend import get_backend

    if backend == "strict":
        pytest.importorskip("array_api_strict")
    be = get_backend(backend)
    vol, proj = reference
    rng = np.random.default_rng(7)
    P = 4
    ang = _random_poses(rng, P)
    data = _noisy_views(proj, ang, rng)
    ctf2 = np.ones(data.shape, np.float32)
    s = Sampling(healpix_order=1, offset_range_A=1 * PIX, offset_step_A=1 * PIX, sym="C6", oversampling=2)
    n_coarse = len(s.grid())                                     # 72: 72·64 = 4608 fine ids
    sigma2 = _noise_power(data) * 20 + 1e-12
    settings = EStepSettings(pixel_size_A=PIX, coarse_radius=6, fine_radius=8, sigma_offset_A=20.0)
    if backend == "numpy":
        p_run, up = proj, (lambda a: a)
    else:
        p_run, up = Projector(be.to_device(vol, "reference"), pad=2), (lambda a: be.to_device(a, "particles"))
    batch = ParticleBatch.of(up(data), up(ctf2), None)
    direct = BackProjector(N, pad=2, dtype=np.float32, backend=be)
    grouped = BackProjector(N, pad=2, dtype=np.float32, backend=be)
    r1 = expectation_batch(p_run, batch, sigma2, s, ang, settings, backprojector=direct)
    cache = IterationCache()
    r2 = expectation_batch(p_run, batch, sigma2, s, ang, settings, backprojector=grouped, cache=cache)
    (sums,) = cache.rotation_sums.values()
    assert sums.values.shape[0] == n_coarse * 64
    assert int(be.xp.max(be.xp.nonzero(sums.used)[0])) >= n_coarse * 8   # ids past the old n_coarse·8 table
    cache.flush()
    w1, w2 = (be.to_host(b.weight, "sums") for b in (direct, grouped))
    d1, d2 = (be.to_host(b.data, "sums") for b in (direct, grouped))
    np.testing.assert_allclose(w2, w1, rtol=1e-4, atol=1e-5 * np.abs(w1).max())
    np.testing.assert_allclose(d2, d1, rtol=1e-4, atol=1e-5 * np.abs(d1).max())
    np.testing.assert_array_equal(be.to_host(r1.rot), be.to_host(r2.rot))


def test_firstiter_cc_finds_the_offsets_the_prior_does_not_pin(tiny_project, tiny_extract_3d):
    """--firstiter_cc scores by correlation; the picks are 2.75 px off and the best shift must follow.

    (With the Gaussian offset prior added to the correlations the shifts stayed at 0.)
    """
    from subtomo_nb.fourier.filters import low_pass
    from subtomo_nb.io.mrc import read_map
    from subtomo_nb.io.star import read_star
    from subtomo_nb.refine.noise import initial_sigma2
    from subtomo_nb.tasks.particle_data import load_particle_set, particle_transforms

    pset, tomos = load_particle_set(tiny_extract_3d, None)
    names = pset.particles["rlnTomoParticleName"].astype(str)
    truth = read_star(tiny_project["particles_true"])["particles"].set_index("rlnTomoParticleName").loc[names]
    true_px = truth[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(float)[:8] / 10.8
    ref, _ = read_map(tiny_project["map"])
    proj = Projector(low_pass(np.asarray(ref, np.float64), 50.0, 10.8).astype(np.float32), pad=2)
    rows = np.arange(8)
    data, ctf2, mult = particle_transforms(pset, rows, tomograms=tomos, dtype=np.float32, origins=np.zeros((8, 3)))
    s2 = initial_sigma2(pset, np.arange(len(pset.particles)), 32, tomos, np.float32)
    smp = Sampling(healpix_order=1, offset_range_A=5 * 10.8, offset_step_A=2 * 10.8, sym="C6")
    res = expectation_batch(proj, ParticleBatch.of(data, ctf2, mult), s2, smp, np.zeros((8, 3)),
                            EStepSettings(pixel_size_A=10.8, coarse_radius=8, fine_radius=10, sigma_offset_A=10.0,
                                          firstiter_cc=True), cache=IterationCache())
    assert np.median(np.linalg.norm(true_px, axis=1)) > 2.0           # the picks are off-centre
    err = np.linalg.norm(res.shift_px - true_px, axis=1)
    assert np.median(err) < 1.0, (res.shift_px, true_px)


def test_fine_products_of_significant_pairs_equal_the_dense_product():
    """The pairwise fine products (sparse significance) equal the dense batched product on every
    significant (rotation, translation) block; the dense path is taken when most pairs are kept."""
    from subtomo_nb.refine.expectation import _fine_products

    rng = np.random.default_rng(3)
    P, Rmax, Tmax, cr, ct, K2 = 3, 7, 5, 8, 8, 40
    lhs = rng.standard_normal((P, Tmax * ct, K2)).astype(np.float32)
    rhs = rng.standard_normal((P, Rmax * cr, K2)).astype(np.float32)
    dense = lhs.astype(np.float64) @ rhs.astype(np.float64).transpose(0, 2, 1)
    sparse_ok = rng.random((P, Rmax, Tmax)) < 0.1
    sparse_ok[0, 2, 3] = True
    got = _fine_products(lhs, rhs, sparse_ok, ct, cr)
    mask = np.repeat(np.repeat(sparse_ok, cr, axis=1), ct, axis=2).transpose(0, 2, 1)   # (P, Tf, Rf)
    np.testing.assert_allclose(got[mask], dense[mask], rtol=1e-4, atol=1e-3)
    assert np.all(got[~mask] == 0)                 # blocks of non-significant pairs not computed
    full_ok = np.ones((P, Rmax, Tmax), dtype=bool)
    np.testing.assert_allclose(_fine_products(lhs, rhs, full_ok, ct, cr), dense, rtol=1e-4, atol=1e-3)


def test_lazily_filled_fine_reference_equals_per_particle_interpolation(reference):
    """A prior-restricted search with the per-iteration coarse- and fine-reference caches (rows interpolated
    when first needed) gives the same poses, weights and sums as interpolating per particle; the
    cache's rows equal direct interpolation at the children's orientations."""
    from subtomo_nb.geometry.healpix import oversampled_children, psi_step
    from subtomo_nb.refine.expectation import (
        CoarseReferenceCache,
        FineReferenceCache,
        FourierSelection,
        reference_terms,
    )

    vol, proj = reference
    s = Sampling(healpix_order=2, offset_range_A=2 * PIX, offset_step_A=2 * PIX, sym="C6", sigma_tilt=10.0)
    rot, tilt, psi, pix = s.coarse_grid()
    rng = np.random.default_rng(7)
    pick = rng.choice(len(rot), 6, replace=False)
    A = euler_to_matrix(rot[pick], tilt[pick], psi[pick])
    data = (proj.rotate3d(A, N) + 0.3 * (rng.standard_normal((6, N, N, N // 2 + 1))
                                         + 1j * rng.standard_normal((6, N, N, N // 2 + 1)))).astype(np.complex64)
    ctf2 = np.ones(data.shape, np.float32)
    sigma2 = _noise_power(data) + 1e-12
    prior = np.stack([rot[pick], tilt[pick], psi[pick]], axis=1)
    settings = EStepSettings(pixel_size_A=PIX, coarse_radius=8, fine_radius=12, sigma_offset_A=20.0)
    cache = IterationCache()
    bp_c, bp_n = BackProjector(N, pad=2, dtype=np.float32), BackProjector(N, pad=2, dtype=np.float32)
    with_cache = [expectation_batch(proj, ParticleBatch.of(data[b], ctf2[b], None), sigma2, s, prior[b], settings,
                                    cache=cache, backprojector=bp_c) for b in (slice(0, 3), slice(3, 6))]
    cache.flush()
    without = [expectation_batch(proj, ParticleBatch.of(data[b], ctf2[b], None), sigma2, s, prior[b], settings,
                                 backprojector=bp_n) for b in (slice(0, 3), slice(3, 6))]
    [fine] = cache.fine_references.values()
    assert isinstance(fine, FineReferenceCache)
    assert 0 < fine.filled.sum() < len(rot)                  # only the neighbourhoods were interpolated
    # the coarse rows: exactly those some particle's prior reaches, equal to direct interpolation
    [coarse] = cache.coarse_rows.values()
    assert isinstance(coarse, CoarseReferenceCache)
    reach = np.isfinite(log_orientation_prior(s, rot, tilt, psi, *prior.T)).any(axis=0)
    assert 0 < reach.sum() < len(rot)
    np.testing.assert_array_equal(coarse.filled, reach)
    some = np.flatnonzero(reach)[::7]
    direct = reference_terms(proj, rot[some], tilt[some], psi[some], FourierSelection.make(N, 8).points)
    np.testing.assert_array_equal(coarse.stacked[coarse.slot[some]], direct.stacked)
    np.testing.assert_array_equal(coarse.power[coarse.slot[some]], direct.power)
    # slots are dense and distinct: the first batch's orientations are consecutive rows
    used = coarse.slot[reach]
    np.testing.assert_array_equal(np.sort(used), np.arange(reach.sum()))
    for a, b in zip(with_cache, without):
        np.testing.assert_array_equal(a.rot, b.rot)
        np.testing.assert_array_equal(a.shift_px, b.shift_px)
        np.testing.assert_allclose(a.pmax, b.pmax, rtol=1e-5)
        np.testing.assert_allclose(a.sigma2_num, b.sigma2_num, rtol=1e-5)
    np.testing.assert_allclose(bp_c.data, bp_n.data, rtol=1e-4, atol=1e-4 * np.abs(bp_n.data).max())
    # rows of one filled coarse orientation equal direct interpolation
    c = int(np.flatnonzero(fine.filled)[0])
    slot = int(fine.slot[c])
    fr, ft, fp = oversampled_children(pix[[c]], psi[[c]], s.healpix_order, s.oversampling, psi_step(s.healpix_order))
    from subtomo_nb.refine.expectation import FourierSelection

    V = proj.sample(euler_to_matrix(fr.ravel(), ft.ravel(), fp.ravel()), FourierSelection.make(N, 12).points)
    K = V.shape[1]
    np.testing.assert_array_equal(fine.stacked[slot * 8:(slot + 1) * 8, :K], V.real)
    np.testing.assert_allclose(fine.power[slot * 8:(slot + 1) * 8], V.real ** 2 + V.imag ** 2, rtol=1e-6)  # float32 rounding


def test_coarse_cache_filled_from_several_threads_at_once(reference):
    """A dask worker with several threads may fill its shared coarse cache from two batches at
    once: every orientation still gets one row of its own, equal to direct interpolation."""
    from concurrent.futures import ThreadPoolExecutor

    from subtomo_nb.refine.expectation import CoarseReferenceCache, FourierSelection, reference_terms

    _vol, proj = reference
    s = Sampling(healpix_order=2, sym="C1")
    grid = s.grid()
    pts = FourierSelection.make(N, 6).points
    cache = CoarseReferenceCache(len(grid), len(pts), proj.rdtype)
    rng = np.random.default_rng(4)
    wanted = [np.sort(rng.choice(len(grid), 700, replace=False)) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda r: cache.fill(proj, grid, pts, r), wanted))
    reached = np.unique(np.concatenate(wanted))
    assert cache.n_used == len(reached)
    np.testing.assert_array_equal(np.sort(cache.slot[reached]), np.arange(len(reached)))
    direct = reference_terms(proj, *grid.angles(reached)[:3], pts)
    np.testing.assert_array_equal(cache.stacked[cache.slot[reached]], direct.stacked)
    for rows, cr in zip(wanted, got):
        np.testing.assert_array_equal(cr.rows(slice(None)).power, cache.power[cache.slot[rows]])


# ---------------------------------------------------------------------------------------------
# the strict test device: the four stages on device arrays give the numpy run's results
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["global", "local", "firstiter_cc"])
@pytest.mark.parametrize("use_cache", [False, True])
def test_expectation_batch_strict(reference, case, use_cache):
    """expectation_batch on the strict device (particles, reference and back-projector there) gives
    the numpy run's best poses, pmax, sigma2 sums and back-projected sums; no host copy of particle data
    or results is made inside it."""
    pytest.importorskip("array_api_strict")
    from subtomo_nb.backend import get_backend

    be = get_backend("strict")
    vol, proj = reference
    rng = np.random.default_rng(5)
    P = 6
    ang = _random_poses(rng, P)
    data = _noisy_views(proj, ang, rng)
    ctf2 = rng.uniform(0.5, 1.0, data.shape).astype(np.float32)
    mult = rng.uniform(0.5, 2.0, data.shape).astype(np.float32)
    sigma2 = _noise_power(data) * (20 if case == "global" else 1) + 1e-12
    if case == "local":
        s = Sampling(healpix_order=3, offset_range_A=2 * PIX, offset_step_A=1 * PIX, sym="C1",
                     sigma_rot=5.0, sigma_tilt=5.0, sigma_psi=5.0)
    else:
        s = Sampling(healpix_order=1, offset_range_A=1 * PIX, offset_step_A=1 * PIX, sym="C6")
    settings = EStepSettings(pixel_size_A=PIX, coarse_radius=6, fine_radius=8, sigma_offset_A=20.0,
                             firstiter_cc=case == "firstiter_cc")
    bp_np = BackProjector(N, pad=2, dtype=np.float32)
    cache = IterationCache() if use_cache else None
    r_np = expectation_batch(proj, ParticleBatch.of(data, ctf2, mult), sigma2, s, ang, settings,
                             backprojector=bp_np, cache=cache)
    if cache is not None:
        cache.flush()
    proj_d = Projector(be.to_device(vol, "reference"), pad=2)
    bp_d = BackProjector(N, pad=2, dtype=np.float32, backend=be)
    batch = ParticleBatch.of(*(be.to_device(a, "particles") for a in (data, ctf2, mult)))
    cache_d = IterationCache() if use_cache else None
    before = be.transfers.snapshot()
    r_d = expectation_batch(proj_d, batch, sigma2, s, ang, settings, backprojector=bp_d, cache=cache_d)
    if cache_d is not None:
        cache_d.flush()
    after = be.transfers.snapshot()
    for kind in ("particles", "reference", "results", "sums"):     # only metadata crossed
        assert after["h2d"].get(kind) == before["h2d"].get(kind), kind
        assert after["d2h"].get(kind) == before["d2h"].get(kind), kind
    assert be.owns(r_d.rot) and be.owns(r_d.sigma2_num)
    got = r_d.to_host(be)
    np.testing.assert_array_equal(got.rot, r_np.rot)
    np.testing.assert_array_equal(got.tilt, r_np.tilt)
    np.testing.assert_array_equal(got.psi, r_np.psi)
    np.testing.assert_array_equal(got.shift_px, r_np.shift_px)
    np.testing.assert_array_equal(got.n_significant, r_np.n_significant)
    # The device runs the array expressions, numpy its numba kernels (reference interpolation,
    # b·φ): float32 rounding of V and B (~1e-7 relative) moves the float32 fine diff2 by up to
    # ~14 ulp (2e-4 on ~150 in the local case). Measured max differences (strict vs numpy):
    #   pmax (relative)            global 2.1e-7, local 1.1e-4, firstiter_cc 0
    #   log_likelihood (relative)  global 9.9e-7, local 1.6e-7 (abs 1.1e-5 of 70), firstiter_cc 6.7e-9
    #   sigma2_num (relative)      global 1.2e-7, local 4.6e-7, firstiter_cc 7.2e-8; sigma2_den equal
    #   back-projected sums / max  global 2.7e-7, local 1.3e-5, firstiter_cc 0
    local = case == "local"
    np.testing.assert_allclose(got.pmax, r_np.pmax, rtol=2e-4 if local else 1e-6)
    np.testing.assert_allclose(got.log_likelihood, r_np.log_likelihood, rtol=2e-6, atol=0)
    np.testing.assert_allclose(got.sigma2_num, r_np.sigma2_num, rtol=1e-6)
    np.testing.assert_array_equal(got.sigma2_den, r_np.sigma2_den)
    for name in ("data", "weight"):
        ref_sum = np.asarray(getattr(bp_np, name))
        np.testing.assert_allclose(be.to_host(getattr(bp_d, name), "sums"), ref_sum, rtol=0,
                                   atol=(3e-5 if local else 1e-6) * np.abs(ref_sum).max())


def test_fine_products_strict():
    """The pairwise fine products on the strict device equal the numpy path's."""
    pytest.importorskip("array_api_strict")
    from subtomo_nb.backend import get_backend
    from subtomo_nb.refine.expectation import _fine_products

    be = get_backend("strict")
    rng = np.random.default_rng(3)
    P, Rmax, Tmax, cr, ct, K2 = 3, 7, 5, 8, 8, 40
    lhs = rng.standard_normal((P, Tmax * ct, K2)).astype(np.float32)
    rhs = rng.standard_normal((P, Rmax * cr, K2)).astype(np.float32)
    for frac in (0.1, 1.0):
        ok = rng.random((P, Rmax, Tmax)) < frac
        ok[0, 2, 3] = True
        want = _fine_products(lhs, rhs, ok, ct, cr)
        got = _fine_products(be.to_device(lhs), be.to_device(rhs), be.to_device(ok), ct, cr)
        np.testing.assert_array_equal(be.to_host(got), want)
