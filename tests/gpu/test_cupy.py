"""cupy equals numpy to 1e-4: the E-step of a batch and the reconstruction (GPU machines only).

Marked ``gpu``; skipped where cupy or a CUDA device is missing (every CI machine), failed instead
with ``SUBTOMO_REQUIRE_GPU=1``. Run them with ``SUBTOMO_REQUIRE_GPU=1 pytest -m gpu tests/gpu`` or
``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.gpu._require import require_cupy_device

cupy = require_cupy_device()     # skip without cupy or a device; a failure with SUBTOMO_REQUIRE_GPU=1

from subtomo_nb.backend import get_backend  # noqa: E402
from subtomo_nb.fourier.backprojector import BackProjector  # noqa: E402
from subtomo_nb.fourier.projector import Projector  # noqa: E402
from subtomo_nb.io.mrc import read_map  # noqa: E402
from subtomo_nb.refine.expectation import EStepSettings, IterationCache, ParticleBatch, expectation_batch  # noqa: E402
from subtomo_nb.refine.noise import initial_sigma2  # noqa: E402
from subtomo_nb.refine.sampling import Sampling  # noqa: E402
from subtomo_nb.tasks.particle_data import load_particle_set, particle_transforms  # noqa: E402

pytestmark = pytest.mark.gpu
RTOL = 1e-4


def _close(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the largest magnitude."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _estep(backend: str, tiny_project, tiny_extract_3d):
    be = get_backend(backend)
    pset, _ = load_particle_set(tiny_extract_3d)
    rows = np.arange(8)
    data, ctf2, mult = particle_transforms(pset, rows, apply_origins=True, dtype=np.float32)
    ref, pix = read_map(tiny_project["map"])
    sigma2 = initial_sigma2(pset, rows, 32, None, np.float32)
    sampling = Sampling(healpix_order=1, offset_range_A=2 * pix, offset_step_A=pix, sym="C6")
    settings = EStepSettings(pixel_size_A=pix, coarse_radius=8, fine_radius=12, sigma_offset_A=2 * pix)
    projector = Projector(be.to_device(ref.astype(np.float32), "reference"), pad=2)
    batch = ParticleBatch.of(*(be.to_device(a, "particles") for a in (data, ctf2, mult)))
    bp = BackProjector(32, pad=2, r_max=12, dtype=np.float32, backend=be)
    cache = IterationCache()
    res = expectation_batch(projector, batch, sigma2, sampling, np.zeros((len(rows), 3)), settings,
                            backprojector=bp, cache=cache)
    cache.flush()
    host = {f.name: be.to_host(getattr(res, f.name)) for f in dataclasses.fields(res)}
    return host, be.to_host(bp.data, "sums"), be.to_host(bp.weight, "sums")


def test_expectation_batch_cupy_equals_numpy(tiny_project, tiny_extract_3d):
    ref, ref_data, ref_weight = _estep("numpy", tiny_project, tiny_extract_3d)
    got, data, weight = _estep("cupy", tiny_project, tiny_extract_3d)
    for name in ("rot", "tilt", "psi", "shift_px"):
        np.testing.assert_allclose(got[name], ref[name], atol=1e-3, err_msg=name)   # the same best poses
    for name in ("pmax", "log_likelihood", "sigma2_num", "sigma2_den"):
        assert _close(got[name], ref[name]) < RTOL, name
    assert _close(data, ref_data) < RTOL and _close(weight, ref_weight) < RTOL


def test_reconstruct_cupy_equals_numpy(tiny_extract_3d, tmp_path):
    from subtomo_nb.tasks.reconstruct import reconstruct_particles

    maps = {}
    for backend in ("numpy", "cupy"):
        result = reconstruct_particles(tiny_extract_3d, tmp_path / backend / "merged.mrc", sym="C6", ctf=True,
                                       backend=backend)
        maps[backend] = read_map(result.merged_path)[0]
    assert _close(maps["cupy"], maps["numpy"]) < RTOL
