"""Reconstruction functions (fourier/reconstruct.py) on the strict test device against numpy.

The strict backend's arrays live on ``device1`` and refuse host conversion and mixing with
numpy arrays, so these runs prove that the M-step's reconstruction, downsampled average and
SSNR/tau2 update run on device arrays with array-API calls only and no host copies; their
numbers must equal the numpy run's exactly (same numpy code underneath).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _fourier_helpers import assert_same_on_device

from subtomo_nb.fourier.reconstruct import (
    _centred_crop,
    blob_ft_ratio,
    downsampled_average,
    gridding_correct,
    ssnr_tau2_from_fsc,
    wiener_reconstruct,
)

BOX, PAD = 20, 2.0
M = int(BOX * PAD)


@pytest.fixture(scope="module")
def sums() -> tuple[np.ndarray, np.ndarray]:
    """Padded half-transform data (complex64) and weights (float32, some zero) of box 20, pad 2."""
    rng = np.random.default_rng(5)
    shape = (M, M, M // 2 + 1)
    w = rng.gamma(2.0, 1.0, size=shape).astype(np.float32)
    w[rng.random(shape) < 0.1] = 0.0
    d = ((rng.normal(size=shape) + 1j * rng.normal(size=shape)) * w).astype(np.complex64)
    return d, w


def _d2h(be) -> int:
    return sum(v[0] for v in be.transfers.snapshot()["d2h"].values())


@pytest.mark.parametrize("case", ["plain", "tau2_device", "tau2_host_2d", "pipe_menon", "no_mask"])
def test_wiener_reconstruct_strict(be, sums, case: str) -> None:
    d, w = sums
    tau2 = np.random.default_rng(6).gamma(2.0, 1.0, size=BOX // 2 + 1)
    tau2[3] = 0.0  # the 1 / (0.001 W) branch
    kw = {"plain": {}, "tau2_device": {"tau2": tau2, "tau2_fudge": 2.0},
          "tau2_host_2d": {"tau2": tau2, "data_dim": 2, "r_max": 7},
          "pipe_menon": {"skip_gridding": False, "gridding_iterations": 2},
          "no_mask": {"edge_mask": False, "do_gridding_correction": False}}[case]
    ref = wiener_reconstruct(d, w, BOX, PAD, **kw)
    dkw = dict(kw)
    if case == "tau2_device":
        dkw["tau2"] = be.to_device(tau2, "test")
    d_dev, w_dev = be.to_device(d, "test"), be.to_device(w, "test")
    before = _d2h(be)
    got = wiener_reconstruct(d_dev, w_dev, BOX, PAD, **dkw)
    assert _d2h(be) == before  # nothing came back to the host
    assert ref.shape == (BOX,) * 3 and ref.dtype == np.float32
    assert_same_on_device(be, got, ref)


def test_wiener_reconstruct_refuses_host_arrays_on_strict(be, sums) -> None:
    d, w = sums
    with pytest.raises(TypeError), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # strict's warning on comparing a numpy dtype
        wiener_reconstruct(be.to_device(d, "test"), w, BOX, PAD)


@pytest.mark.parametrize("divide", [True, False])
def test_downsampled_average_strict(be, sums, divide: bool) -> None:
    d, w = sums
    ref = downsampled_average(d, w, BOX, PAD, divide=divide)
    assert ref.shape == (BOX, BOX, BOX // 2 + 1) and ref.dtype == np.complex64
    assert_same_on_device(be, downsampled_average(be.to_device(d, "test"), be.to_device(w, "test"), BOX, PAD, divide=divide), ref)


@pytest.mark.parametrize("whole_data", [False, True])
def test_ssnr_tau2_from_fsc_strict(be, sums, whole_data: bool) -> None:
    _, w = sums
    f = np.clip(np.random.default_rng(7).normal(0.5, 0.4, size=BOX // 2 + 1), -0.2, 1.0)
    ref = ssnr_tau2_from_fsc(f, w, BOX, PAD, r_max=8, tau2_fudge=1.5, whole_data=whole_data)
    got = ssnr_tau2_from_fsc(be.to_device(f, "test"), be.to_device(w, "test"), BOX, PAD, r_max=8,
                             tau2_fudge=1.5, whole_data=whole_data)
    for name in ref._fields:
        assert_same_on_device(be, getattr(got, name), getattr(ref, name))
    # a host FSC curve is uploaded (counted as metadata), the fields stay on the device
    n0 = be.transfers.copies("h2d", "metadata")
    got_host_fsc = ssnr_tau2_from_fsc(f, be.to_device(w, "test"), BOX, PAD, r_max=8, tau2_fudge=1.5,
                                      whole_data=whole_data)
    assert be.transfers.copies("h2d", "metadata") == n0 + 1
    assert_same_on_device(be, got_host_fsc.tau2, ref.tau2)


def test_blob_and_gridding_correction_strict(be) -> None:
    r = np.linspace(0.0, 0.6, 61)
    ref = blob_ft_ratio(r)
    assert ref[0] == pytest.approx(1.0)
    assert_same_on_device(be, blob_ft_ratio(be.to_device(r, "test")), ref)
    v = np.random.default_rng(8).normal(size=(BOX,) * 3).astype(np.float32)
    assert_same_on_device(be, gridding_correct(be.to_device(v, "test"), M), gridding_correct(v, M))
    img = v[0].astype(np.float64)
    assert_same_on_device(be, gridding_correct(be.to_device(img, "test"), M), gridding_correct(img, M))


@pytest.mark.parametrize("m, box", [(40, 20), (41, 20), (40, 21), (33, 33), (9, 1)])
def test_centred_crop_equals_fftshift_crop(m: int, box: int) -> None:
    import array_api_compat.numpy as xp

    big = np.random.default_rng(9).normal(size=(m, m, m))
    o = m // 2 - box // 2
    ref = np.fft.fftshift(big)[o:o + box, o:o + box, o:o + box]
    np.testing.assert_array_equal(_centred_crop(xp, big, box), ref)
